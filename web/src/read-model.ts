// Reads of the order read model with read-your-writes: the newest consistency token this tab
// got from a write is sent along; while the answer says stale the page shows "Syncing..." and
// reads again, until the read model has caught up with the user's own write.

import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useEffect, useRef, useSyncExternalStore } from "react";
import type { ReadModelAnswer } from "./api.ts";
import { consistencyToken, isBehind, resyncDelay, subscribeConsistencyTokens } from "./consistency.ts";
import { setSyncSource } from "./sync.ts";

export function useConsistencyToken(user: string): number | undefined {
  return useSyncExternalStore(
    subscribeConsistencyTokens,
    () => consistencyToken(user),
    () => undefined,
  );
}

export function useReadModel<T>(
  user: string,
  key: readonly unknown[],
  read: (token: number | undefined, signal: AbortSignal) => Promise<ReadModelAnswer<T>>,
) {
  const token = useConsistencyToken(user);
  const rounds = useRef(0);
  const query = useQuery({
    queryKey: [...key, { token: token ?? null }],
    queryFn: ({ signal }) => read(token, signal),
    placeholderData: keepPreviousData,
    refetchInterval: (q) => {
      const data = q.state.data;
      if (data && isBehind(data.consistency, token)) return resyncDelay(rounds.current++);
      rounds.current = 0;
      return false;
    },
  });

  // Behind: the answer says so, or a read carrying a newer token is still on its way (the
  // server holds it up to 2 s while the read model catches up).
  const behind =
    token !== undefined &&
    (query.data !== undefined
      ? isBehind(query.data.consistency, token) || (query.isPlaceholderData && query.isFetching)
      : query.isFetching);

  const source = `read-model:${JSON.stringify(key)}`;
  useEffect(() => {
    setSyncSource(source, behind ? "syncing" : undefined);
    return () => setSyncSource(source, undefined);
  }, [source, behind]);

  return { query, behind, token };
}

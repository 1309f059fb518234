import { useMutation } from "@tanstack/react-query";
import { useCallback, useEffect, useMemo, useRef } from "react";
import { defaultIntentStore, type Intent } from "./intents.ts";
import {
  createIntentRunner,
  idempotentState,
  type IdempotentState,
  type IntentCommand,
  type IntentRunnerConfig,
} from "./intent-runner.ts";
import type { Outcome } from "./outcome.ts";

export interface UseIdempotentMutationOptions<TVars, TData> extends IntentRunnerConfig<TVars> {
  /**
   * On mount, if an intent of this name is pending (the page was reloaded mid-request, or an
   * earlier send ended unknown), send it again with its key to learn the real outcome.
   */
  resumeOnMount?: boolean;
  /** Called with every outcome, definite or not. */
  onOutcome?: (outcome: Outcome<TData>) => void;
}

export interface IdempotentMutation<TVars, TData> {
  state: IdempotentState;
  outcome: Outcome<TData> | undefined;
  /** Set when the request could not even be built; nothing was sent. */
  error: unknown;
  /** The pending intent of this name in storage, as of this render. */
  pending: Intent | undefined;
  /** Starts the intent, or re-sends the pending one. A no-op while a send is in flight. */
  submit: (vars: TVars) => void;
  /** Re-sends the pending intent with its key. A no-op when nothing is pending or in flight. */
  resume: () => void;
  /** Clears the shown outcome (not the pending intent). */
  reset: () => void;
}

export function useIdempotentMutation<TVars, TData = unknown>(
  options: UseIdempotentMutationOptions<TVars, TData>,
): IdempotentMutation<TVars, TData> {
  const { intent: name, resumeOnMount = false } = options;
  const store = options.store ?? defaultIntentStore;

  // The latest options, read when a command runs, so that an inline `request` arrow does not
  // make a new mutation function on every render.
  const latest = useRef(options);
  latest.current = options;
  const run = useMemo(
    () => (command: IntentCommand<TVars>) => createIntentRunner<TVars, TData>({ ...latest.current, store })(command),
    [store],
  );

  const mutation = useMutation({
    mutationKey: ["oncely-intent", name],
    mutationFn: run,
    onSuccess: (outcome) => {
      if (outcome) latest.current.onOutcome?.(outcome);
    },
  });

  // Set synchronously, so that a second click in the same frame, before React re-renders with
  // `isPending`, is already refused.
  const busy = useRef(false);
  const { mutateAsync } = mutation;
  const dispatch = useCallback(
    (command: IntentCommand<TVars>) => {
      if (busy.current) return;
      busy.current = true;
      mutateAsync(command)
        .catch(() => undefined) // already in the mutation's state
        .finally(() => {
          busy.current = false;
        });
    },
    [mutateAsync],
  );

  const submit = useCallback((vars: TVars) => dispatch({ kind: "submit", vars }), [dispatch]);
  const resume = useCallback(() => {
    if (store.pending(name)) dispatch({ kind: "resume" });
  }, [dispatch, store, name]);

  useEffect(() => {
    if (resumeOnMount) resume();
  }, [resumeOnMount, resume]);

  return {
    state: idempotentState(mutation.status, mutation.data),
    outcome: mutation.data ?? undefined,
    error: mutation.error ?? undefined,
    pending: store.pending(name),
    submit,
    resume,
    reset: mutation.reset,
  };
}

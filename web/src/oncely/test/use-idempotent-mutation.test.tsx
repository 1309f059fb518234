import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { renderToString } from "react-dom/server";
import { describe, expect, it } from "vitest";
import { createIntentStore } from "../intents.ts";
import { MemoryStorage } from "../memory-storage.ts";
import { useIdempotentMutation } from "../use-idempotent-mutation.ts";

function Probe({ store }: { store: ReturnType<typeof createIntentStore> }) {
  const m = useIdempotentMutation({
    intent: "place-order:c-42",
    request: (cart: string) => ({ method: "POST", url: "/orders", body: { cart } }),
    store,
  });
  return <p>{`${m.state}|${m.pending?.key ?? "none"}`}</p>;
}

function render(store: ReturnType<typeof createIntentStore>): string {
  return renderToString(
    <QueryClientProvider client={new QueryClient()}>
      <Probe store={store} />
    </QueryClientProvider>,
  );
}

describe("useIdempotentMutation", () => {
  it("shows the pending intent from storage on the first render of a reloaded page", () => {
    const storage = new MemoryStorage();
    const intent = createIntentStore({ storage }).start("place-order:c-42", { method: "POST", url: "/orders" });

    expect(render(createIntentStore({ storage }))).toContain(`idle|${intent.key}`);
    expect(render(createIntentStore({ storage: new MemoryStorage() }))).toContain("idle|none");
  });
});

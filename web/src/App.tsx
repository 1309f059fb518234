import { pendingIntents } from "./oncely/index.ts";

/** A placeholder until the shop is built: it shows what this tab still has pending. */
export function App() {
  const pending = pendingIntents();
  return (
    <main className="page">
      <h1>oncely shop</h1>
      <p>The reference shop is not built yet. This page hosts the browser library in <code>src/oncely</code>.</p>
      <section aria-label="pending intents">
        <h2>Pending in this tab</h2>
        {pending.length === 0 ? (
          <p className="muted">Nothing pending.</p>
        ) : (
          <ul>
            {pending.map((intent) => (
              <li key={intent.key}>
                <code>{intent.name}</code>: {intent.request.method} {intent.request.url}, since{" "}
                {new Date(intent.startedAt).toLocaleTimeString()}
              </li>
            ))}
          </ul>
        )}
      </section>
    </main>
  );
}

import { currentPath, Link, navigate } from "../navigation.tsx";
import { useUsers } from "../queries.ts";
import { setCurrentUser, useCurrentUser } from "../session.ts";
import { EmptyState, ErrorState, PageHeader, Skeleton } from "../components/ui.tsx";

const TOUR = [
  { to: "/products", title: "Products", text: "Reads that stay on screen while they refresh; a heart that flips at once and rolls back if refused." },
  { to: "/cart", title: "Cart and checkout", text: "Versioned cart writes (If-Match), and a Place order that happens once through double clicks, lost answers and reloads." },
  { to: "/orders", title: "Orders", text: "Read-your-writes on an eventually consistent history; a cancel behind a confirmation, sent once." },
  { to: "/profile", title: "Profile", text: "Two people editing: the conflict is shown and merged, never silently overwritten. Notes autosave, latest wins." },
  { to: "/admin", title: "Behind the scenes", text: "Inject failures (slow or failing payments, lost webhooks) and watch reconciliation and the outbox notice." },
];

export function StartScreen() {
  const users = useUsers();
  const current = useCurrentUser();

  const pick = (id: string) => {
    setCurrentUser(id);
    // From the start page go shopping; from a deep link (e.g. a reloaded /cart), stay there.
    if (currentPath() === "/") navigate("/products");
  };

  return (
    <div className="screen screen-narrow">
      <PageHeader
        title="Who's shopping?"
        caption="who is asking travels as a header (X-Shop-User) on every request; named users, no passwords."
      />
      <p className="lead">
        Pick one of the shop's users. Open a second window as someone else to see two people meet on the same data.
      </p>

      {users.isPending ? (
        <div className="user-grid" data-testid="users-skeleton">
          {[0, 1, 2].map((i) => (
            <div key={i} className="user-card">
              <Skeleton width="44px" height={44} className="round" />
              <Skeleton width="60%" />
            </div>
          ))}
        </div>
      ) : users.isError ? (
        <ErrorState error={users.error} onRetry={() => void users.refetch()} what="the users" testId="users-error" />
      ) : users.data.length === 0 ? (
        <EmptyState title="The shop has no users." testId="users-empty" />
      ) : (
        <ul className="user-grid" aria-label="Users">
          {users.data.map((user) => (
            <li key={user.id}>
              <button
                type="button"
                className={`user-card${user.id === current ? " selected" : ""}`}
                onClick={() => pick(user.id)}
                data-testid={`user-option-${user.id}`}
                aria-pressed={user.id === current}
              >
                <span className="avatar avatar-large" aria-hidden="true">
                  {user.name.charAt(0).toUpperCase()}
                </span>
                <span className="user-card-name">{user.name}</span>
                <span className="muted small">{user.id === current ? "Signed in now" : `as ${user.id}`}</span>
              </button>
            </li>
          ))}
        </ul>
      )}

      <section className="tour" aria-label="What each screen shows">
        <h2>What each screen shows</h2>
        <ol className="tour-list">
          {TOUR.map((item) => (
            <li key={item.to}>
              {current ? <Link to={item.to}>{item.title}</Link> : <strong>{item.title}</strong>}
              <span className="muted"> — {item.text}</span>
            </li>
          ))}
        </ol>
      </section>
    </div>
  );
}

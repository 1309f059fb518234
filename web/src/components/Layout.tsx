import type { ReactNode } from "react";
import { Link } from "../navigation.tsx";
import { useCart, useUsers } from "../queries.ts";
import { CartIcon, Logo } from "./icons.tsx";
import { SyncIndicator } from "./SyncIndicator.tsx";
import { Toaster } from "./Toaster.tsx";

const NAV = [
  { to: "/products", label: "Products", match: ["products"] },
  { to: "/cart", label: "Cart", match: ["cart", "checkout"] },
  { to: "/orders", label: "Orders", match: ["orders", "order"] },
  { to: "/profile", label: "Profile", match: ["profile"] },
  { to: "/admin", label: "Behind the scenes", match: ["admin"] },
] as const;

function CartCount({ user }: { user: string }) {
  const cart = useCart(user);
  const count = (cart.data?.data.items ?? []).reduce((sum, item) => sum + item.qty, 0);
  if (count === 0) return null;
  return (
    <span className="nav-count" data-testid="cart-count" aria-label={`${count} in cart`}>
      {count}
    </span>
  );
}

function UserChip({ user }: { user: string }) {
  const users = useUsers();
  const name = users.data?.find((u) => u.id === user)?.name ?? user;
  const short = name.split(/\s+/, 1)[0] ?? name;
  return (
    <div className="user-chip">
      <span className="avatar" aria-hidden="true">
        {name.charAt(0).toUpperCase()}
      </span>
      <span className="user-name" data-testid="current-user" data-user={user} title={`Signed in as ${name}`}>
        {short}
      </span>
      <Link to="/" className="switch-user" data-testid="switch-user">
        Switch user
      </Link>
    </div>
  );
}

export function Layout({ user, route, children }: { user: string | null; route: string | undefined; children: ReactNode }) {
  return (
    <div className="app">
      <header className="topbar">
        <div className="topbar-inner">
          <Link to={user ? "/products" : "/"} className="brand">
            <Logo />
            <span>oncely shop</span>
          </Link>
          {user ? (
            <nav className="nav" aria-label="Main">
              {NAV.map((item) => {
                const active = route !== undefined && (item.match as readonly string[]).includes(route);
                return (
                  <Link
                    key={item.to}
                    to={item.to}
                    className={`nav-link${active ? " active" : ""}`}
                    aria-current={active ? "page" : undefined}
                    data-testid={`nav-${item.to.slice(1)}`}
                  >
                    {item.to === "/cart" ? <CartIcon size={16} /> : null}
                    {item.label}
                    {item.to === "/cart" ? <CartCount user={user} /> : null}
                  </Link>
                );
              })}
            </nav>
          ) : (
            <span className="nav" />
          )}
          <div className="topbar-right">
            <SyncIndicator />
            {user ? <UserChip user={user} /> : null}
          </div>
        </div>
      </header>
      <main className="main">{children}</main>
      <footer className="footer">
        <p>
          The reference shop of oncely. Every screen names the pattern it shows; "Behind the scenes" injects the
          failures.
        </p>
      </footer>
      <Toaster />
    </div>
  );
}

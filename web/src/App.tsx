import { Fragment, useEffect } from "react";
import { Layout } from "./components/Layout.tsx";
import { usePath } from "./navigation.tsx";
import { resolveRoute, type Route } from "./router.ts";
import { useCurrentUser } from "./session.ts";
import { AdminScreen } from "./screens/AdminScreen.tsx";
import { CartScreen } from "./screens/CartScreen.tsx";
import { CheckoutScreen } from "./screens/CheckoutScreen.tsx";
import { NotFoundScreen } from "./screens/NotFoundScreen.tsx";
import { OrderScreen } from "./screens/OrderScreen.tsx";
import { OrdersScreen } from "./screens/OrdersScreen.tsx";
import { ProductsScreen } from "./screens/ProductsScreen.tsx";
import { ProfileScreen } from "./screens/ProfileScreen.tsx";
import { StartScreen } from "./screens/StartScreen.tsx";

type RouteName = "start" | "products" | "cart" | "checkout" | "orders" | "order" | "profile" | "admin";

export const ROUTES: readonly Route<RouteName>[] = [
  { name: "start", pattern: "/" },
  { name: "products", pattern: "/products" },
  { name: "cart", pattern: "/cart" },
  { name: "checkout", pattern: "/checkouts/:id" },
  { name: "orders", pattern: "/orders" },
  { name: "order", pattern: "/orders/:id" },
  { name: "profile", pattern: "/profile" },
  { name: "admin", pattern: "/admin" },
];

const TITLES: Record<RouteName, string> = {
  start: "Who's shopping?",
  products: "Products",
  cart: "Cart",
  checkout: "Checkout progress",
  orders: "Orders",
  order: "Order",
  profile: "Profile",
  admin: "Behind the scenes",
};

function Screen({ route, params, user }: { route: RouteName; params: Record<string, string>; user: string }) {
  switch (route) {
    case "start":
      return <StartScreen />;
    case "products":
      return <ProductsScreen user={user} />;
    case "cart":
      return <CartScreen user={user} />;
    case "checkout":
      return <CheckoutScreen user={user} id={params.id ?? ""} />;
    case "orders":
      return <OrdersScreen user={user} />;
    case "order":
      return <OrderScreen user={user} id={params.id ?? ""} />;
    case "profile":
      return <ProfileScreen user={user} />;
    case "admin":
      return <AdminScreen user={user} />;
  }
}

export function App() {
  const path = usePath();
  const user = useCurrentUser();
  const match = resolveRoute(ROUTES, path);

  useEffect(() => {
    const title = match ? TITLES[match.name] : "Not found";
    document.title = `${title} · oncely shop`;
  }, [match]);

  let content;
  if (!match) content = <NotFoundScreen />;
  else if (!user || match.name === "start") content = <StartScreen />;
  else content = <Screen route={match.name} params={match.params} user={user} />;

  return (
    <Layout user={user} route={match?.name}>
      {/* A new user gets fresh screens: no state of the previous one survives. */}
      <Fragment key={user ?? "nobody"}>{content}</Fragment>
    </Layout>
  );
}

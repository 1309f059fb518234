// Query keys and the reads several screens share. Every key starts with the user, so one
// user's cached data is never shown to another.

import { useQuery, type QueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { firstName } from "./format.ts";
import { getProducts, getUsers, readCart, type Product, type User } from "./api.ts";

export const keys = {
  users: ["users"] as const,
  products: (user: string) => [user, "products"] as const,
  favourites: (user: string) => [user, "favourites"] as const,
  cart: (user: string) => [user, "cart"] as const,
  checkout: (user: string, id: string) => [user, "checkout", id] as const,
  orders: (user: string) => [user, "orders"] as const,
  order: (user: string, id: string) => [user, "order", id] as const,
  profile: (user: string) => [user, "profile"] as const,
  notifications: (user: string) => [user, "notifications"] as const,
  reconciliation: (user: string) => [user, "reconciliation"] as const,
  outbox: (user: string) => [user, "outbox"] as const,
  chaos: (user: string) => [user, "chaos"] as const,
};

export function useUsers() {
  return useQuery({ queryKey: keys.users, queryFn: ({ signal }) => getUsers(signal), staleTime: 5 * 60_000 });
}

/** "Ada" for "ada", from the users list; the id itself while that is unknown. */
export function useUserName(): (id: string | null | undefined) => string {
  const users = useUsers();
  return (id) => {
    if (!id) return "Someone";
    const user = users.data?.find((u: User) => u.id === id);
    return user ? firstName(user.name) : id;
  };
}

export function useProducts(user: string) {
  return useQuery({ queryKey: keys.products(user), queryFn: ({ signal }) => getProducts(signal) });
}

export function useProductIndex(user: string): Map<string, Product> {
  const products = useProducts(user);
  return new Map((products.data ?? []).map((p) => [p.id, p]));
}

export function useCart(user: string) {
  return useQuery({ queryKey: keys.cart(user), queryFn: ({ signal }) => readCart(signal) });
}

/** After an order changed: the cart, the stock and the order history move with it. */
export function invalidateAfterOrder(client: QueryClient, user: string): void {
  void client.invalidateQueries({ queryKey: keys.cart(user) });
  void client.invalidateQueries({ queryKey: keys.products(user) });
  void client.invalidateQueries({ queryKey: keys.orders(user) });
  void client.invalidateQueries({ queryKey: [user, "order"] });
  void client.invalidateQueries({ queryKey: keys.notifications(user) });
}

/** The current time, ticking, so "2 minutes ago" stays true while the page is open. */
export function useNow(everyMs = 15_000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), everyMs);
    return () => clearInterval(timer);
  }, [everyMs]);
  return now;
}

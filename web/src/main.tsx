import { QueryCache, QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App.tsx";
import { ApiError, ShopProblem } from "./api.ts";
import { VersionedReadError } from "./oncely/index.ts";
import { setCurrentUser } from "./session.ts";
import { showToast } from "./toast.ts";
import "./styles.css";

function isUnknownUser(error: unknown): boolean {
  if (error instanceof ApiError) return error.status === 401 || error.type === ShopProblem.unknownUser;
  if (error instanceof VersionedReadError) return error.status === 401;
  return false;
}

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      staleTime: 5_000,
      refetchOnWindowFocus: true,
      // A refusal (4xx) repeats; only a lost answer or a server error is worth a quiet retry.
      retry: (count, error) => {
        const status = error instanceof ApiError || error instanceof VersionedReadError ? error.status : undefined;
        if (status !== undefined && status < 500) return false;
        return count < 2;
      },
    },
  },
  queryCache: new QueryCache({
    onError: (error) => {
      if (isUnknownUser(error)) {
        setCurrentUser(null);
        showToast("The shop doesn't know that user. Pick one to continue.", { tone: "error" });
      }
    },
  }),
});

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={queryClient}>
      <App />
    </QueryClientProvider>
  </StrictMode>,
);

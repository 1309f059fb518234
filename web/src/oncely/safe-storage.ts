import { MemoryStorage } from "./memory-storage.ts";

/**
 * A storage that never throws. Touching `sessionStorage` throws a SecurityError where the user
 * blocked site data, and `setItem` throws when the quota is full; neither may stop a purchase.
 * Whatever the real storage refuses is kept in memory instead, and reads look in both.
 */
export class SafeStorage {
  readonly #resolve: () => Storage | undefined;
  readonly #fallback = new MemoryStorage();

  constructor(resolve: () => Storage | undefined) {
    this.#resolve = resolve;
  }

  get(key: string): string | null {
    const stored = this.#attempt((s) => s.getItem(key));
    return stored ?? this.#fallback.getItem(key);
  }

  set(key: string, value: string): void {
    const written = this.#attempt((s) => {
      s.setItem(key, value);
      return true;
    });
    if (written) {
      this.#fallback.removeItem(key);
    } else {
      this.#fallback.setItem(key, value);
    }
  }

  remove(key: string): void {
    this.#attempt((s) => s.removeItem(key));
    this.#fallback.removeItem(key);
  }

  keys(): string[] {
    const found = new Set<string>();
    for (const storage of [this.#attempt((s) => s), this.#fallback]) {
      if (!storage) continue;
      try {
        for (let i = 0; i < storage.length; i++) {
          const key = storage.key(i);
          if (key !== null) found.add(key);
        }
      } catch {
        // A storage that fails while listed has nothing we can use.
      }
    }
    return [...found];
  }

  #attempt<T>(use: (storage: Storage) => T): T | undefined {
    try {
      const storage = this.#resolve();
      return storage ? use(storage) : undefined;
    } catch {
      return undefined;
    }
  }
}

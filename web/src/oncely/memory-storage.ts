/**
 * A `Storage` kept in memory: the stand-in for `sessionStorage` in tests, and the fallback when
 * the browser refuses storage (blocked cookies, a full quota). An intent kept here is lost on
 * reload, which is no worse than having no storage at all: the key still holds for the retries
 * of this page.
 */
export class MemoryStorage implements Storage {
  readonly #items = new Map<string, string>();

  get length(): number {
    return this.#items.size;
  }

  clear(): void {
    this.#items.clear();
  }

  getItem(key: string): string | null {
    return this.#items.get(key) ?? null;
  }

  key(index: number): string | null {
    return [...this.#items.keys()][index] ?? null;
  }

  removeItem(key: string): void {
    this.#items.delete(key);
  }

  setItem(key: string, value: string): void {
    this.#items.set(key, String(value));
  }
}

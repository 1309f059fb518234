// oncely's browser library: effectively-once writes from a page, conflict-aware edits, and
// autosave where the latest edit wins. See README.md beside this file.

export type { JsonObject, JsonValue } from "./json.ts";
export { MemoryStorage } from "./memory-storage.ts";
export { newIdempotencyKey } from "./idempotency-key.ts";

export {
  createIntentStore,
  defaultIntentStore,
  DEFAULT_INTENT_PREFIX,
  pendingIntent,
  pendingIntents,
  retireIntent,
  startIntent,
  type Intent,
  type IntentStore,
  type IntentStoreOptions,
  type RequestSpec,
} from "./intents.ts";

export { ProblemType, type Problem } from "./problem.ts";
export { backoffCeiling, fullJitterDelay } from "./backoff.ts";
export { parseRetryAfter } from "./retry-after.ts";
export { isDefinite, type Failed, type Outcome, type Succeeded, type Unknown, type UnknownReason } from "./outcome.ts";
export { sendDefaults, sendIdempotent, type AttemptEvent, type SendOptions } from "./send-idempotent.ts";
export { isInFlight, sendShared } from "./shared-send.ts";

export {
  createIntentRunner,
  idempotentState,
  type IdempotentState,
  type IntentCommand,
  type IntentRunnerConfig,
} from "./intent-runner.ts";
export {
  useIdempotentMutation,
  type IdempotentMutation,
  type UseIdempotentMutationOptions,
} from "./use-idempotent-mutation.ts";

export {
  createVersionedClient,
  readVersioned,
  VersionedReadError,
  writeVersioned,
  type Conflict,
  type Versioned,
  type VersionedClient,
  type VersionedClientOptions,
  type WriteOptions,
  type WriteResult,
} from "./versioned.ts";
export { mergeFields, type FieldConflict, type MergeResult } from "./merge-fields.ts";

export { createAutosaver, type AutosaveStatus, type Autosaver, type AutosaverOptions } from "./autosaver.ts";

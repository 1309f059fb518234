// Someone saved the profile since this user started editing: both versions side by side, who
// changed it and when, and three ways out. Nothing is written until the user chooses.

import type { FieldConflict } from "../oncely/index.ts";
import { EDITABLE_FIELDS, FIELD_LABELS, type Editable, type Pick_ } from "../profile-edit.ts";
import { fullTime, relativeTime } from "../format.ts";
import { AlertIcon } from "../components/icons.tsx";

export interface ConflictState {
  base: Editable;
  mine: Editable;
  current: Editable;
  changedBy: string | undefined;
  changedAt: Date | undefined;
}

function Pane({
  title,
  doc,
  base,
  who,
  testId,
}: {
  title: string;
  doc: Editable;
  base: Editable;
  who: string;
  testId: string;
}) {
  return (
    <div className="conflict-pane" data-testid={testId}>
      <h3>{title}</h3>
      <dl>
        {EDITABLE_FIELDS.map((field) => {
          const changed = doc[field] !== base[field];
          return (
            <div key={field} className={`conflict-field${changed ? " changed" : ""}`} data-testid={`${testId}-${field}`}>
              <dt>
                {FIELD_LABELS[field]}
                {changed ? <span className="changed-tag">changed by {who}</span> : null}
              </dt>
              <dd>{doc[field] === "" ? <span className="muted">(empty)</span> : doc[field]}</dd>
            </div>
          );
        })}
      </dl>
    </div>
  );
}

export function ConflictView({
  conflict,
  who,
  sameUser,
  now,
  merging,
  picks,
  busy,
  onMerge,
  onPick,
  onSaveMerge,
  onCancelMerge,
  onOverwrite,
  onDiscard,
}: {
  conflict: ConflictState;
  who: string;
  sameUser: boolean;
  now: number;
  merging: FieldConflict[] | null;
  picks: Partial<Record<string, Pick_>>;
  busy: boolean;
  onMerge: () => void;
  onPick: (field: string, pick: Pick_) => void;
  onSaveMerge: () => void;
  onCancelMerge: () => void;
  onOverwrite: () => void;
  onDiscard: () => void;
}) {
  const when = conflict.changedAt ? relativeTime(conflict.changedAt, now) : "recently";
  const allPicked = merging ? merging.every((c) => picks[c.field] !== undefined) : false;

  return (
    <section className="conflict" data-testid="conflict-view" aria-labelledby="conflict-title">
      <div className="conflict-head">
        <AlertIcon size={20} />
        <div>
          <h2 id="conflict-title">This profile changed while you were editing</h2>
          <p data-testid="conflict-who">
            <strong>{who}</strong> updated this{" "}
            <span title={conflict.changedAt ? fullTime(conflict.changedAt) : undefined}>{when}</span>
            {sameUser ? " (in another tab or window)" : ""}. Nothing of yours was saved yet.
          </p>
        </div>
      </div>

      <div className="conflict-panes">
        <Pane title="Your version" doc={conflict.mine} base={conflict.base} who="you" testId="conflict-mine" />
        <Pane title="Current version" doc={conflict.current} base={conflict.base} who={who} testId="conflict-current" />
      </div>

      {merging ? (
        <div className="merge-picks" data-testid="merge-picks">
          <p>
            <strong>Both of you changed {merging.length === 1 ? "this field" : "these fields"}.</strong> Pick which one to keep;
            every other change from both sides is kept.
          </p>
          {merging.map((c) => (
            <fieldset key={c.field} className="merge-field">
              <legend>{FIELD_LABELS[c.field as keyof Editable] ?? c.field}</legend>
              <label className={`merge-option${picks[c.field] === "mine" ? " selected" : ""}`}>
                <input
                  type="radio"
                  name={`pick-${c.field}`}
                  checked={picks[c.field] === "mine"}
                  onChange={() => onPick(c.field, "mine")}
                  data-testid={`merge-pick-${c.field}-mine`}
                />
                <span>
                  <span className="muted small">Yours</span> {String(c.mine ?? "")}
                </span>
              </label>
              <label className={`merge-option${picks[c.field] === "theirs" ? " selected" : ""}`}>
                <input
                  type="radio"
                  name={`pick-${c.field}`}
                  checked={picks[c.field] === "theirs"}
                  onChange={() => onPick(c.field, "theirs")}
                  data-testid={`merge-pick-${c.field}-theirs`}
                />
                <span>
                  <span className="muted small">{who}'s</span> {String(c.theirs ?? "")}
                </span>
              </label>
            </fieldset>
          ))}
          <div className="button-row">
            <button
              type="button"
              className="button button-primary"
              onClick={onSaveMerge}
              disabled={!allPicked || busy}
              data-testid="merge-save"
            >
              Save merge
            </button>
            <button type="button" className="button" onClick={onCancelMerge} disabled={busy} data-testid="merge-back">
              Back
            </button>
          </div>
        </div>
      ) : (
        <div className="conflict-actions">
          <div className="conflict-action">
            <button type="button" className="button button-primary" onClick={onMerge} disabled={busy} data-testid="conflict-merge">
              Merge
            </button>
            <span className="muted small">Keep both sets of changes; you choose where you both changed a field.</span>
          </div>
          <div className="conflict-action">
            <button type="button" className="button" onClick={onOverwrite} disabled={busy} data-testid="conflict-overwrite">
              Overwrite
            </button>
            <span className="muted small">Save your version over {who}'s.</span>
          </div>
          <div className="conflict-action">
            <button type="button" className="button" onClick={onDiscard} disabled={busy} data-testid="conflict-discard">
              Discard mine
            </button>
            <span className="muted small">Take the current version; your edit is dropped.</span>
          </div>
        </div>
      )}
    </section>
  );
}

//! The profile: a versioned document written with `If-Match`, and its notes, autosaved
//! outside the version under a sequence number (the highest wins).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use oncely_conditional::{Conditional, WriteError};
use serde::Deserialize;
use serde_json::json;

use super::Caller;
use crate::app::Shop;
use crate::model::{Address, Profile, ProfileDoc};
use crate::problem::{json_answer, parse_body, Problem};
use crate::store::{NotesSaved, Written};
use crate::trail::Entity;

/// `PUT /api/profile`'s body: the document. What `GET` answers besides it (the notes, the
/// version fields) is accepted and ignored, so a client may send back what it read; the
/// notes change only through their autosave.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileBody {
    name: String,
    email: String,
    addresses: Vec<Address>,
    #[serde(default, rename = "notes")]
    _notes: Option<serde_json::Value>,
    #[serde(default, rename = "notes_seq")]
    _notes_seq: Option<serde_json::Value>,
    #[serde(default, rename = "version")]
    _version: Option<serde_json::Value>,
    #[serde(default, rename = "updated_by")]
    _updated_by: Option<serde_json::Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<serde_json::Value>,
}

/// `PUT /api/profile/notes`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotesBody {
    notes: String,
    seq: u64,
}

/// Checks a profile and gives new addresses their ids; the error is a 422's detail.
fn checked(body: ProfileBody) -> Result<ProfileDoc, String> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 100 {
        return Err("`name` must be 1-100 characters".into());
    }
    let email = body.email.trim().to_owned();
    let sound_email = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'));
    if !sound_email {
        return Err("`email` must be an e-mail address".into());
    }
    if body.addresses.len() > 10 {
        return Err("a profile keeps at most 10 addresses".into());
    }
    let mut addresses: Vec<Address> = Vec::with_capacity(body.addresses.len());
    for mut a in body.addresses {
        a.line = a.line.trim().to_owned();
        if a.line.is_empty() || a.line.chars().count() > 200 {
            return Err("each address `line` must be 1-200 characters".into());
        }
        if a.id.is_empty() {
            a.id = format!("addr_{:08x}", rand::random::<u32>());
        } else if a.id.len() > 64 || addresses.iter().any(|b| b.id == a.id) {
            return Err(format!("address id `{}` is too long or listed twice", a.id));
        }
        addresses.push(a);
    }
    Ok(ProfileDoc {
        name,
        email,
        addresses,
    })
}

/// What the trail keeps of a profile change: the versions and which fields changed, never
/// the personal values (they cannot be redacted from the trail later).
fn changes(old: Option<&Profile>, new: &Profile) -> (serde_json::Value, serde_json::Value) {
    let mut changed = Vec::new();
    if let Some(old) = old {
        if old.name != new.name {
            changed.push("name");
        }
        if old.email != new.email {
            changed.push("email");
        }
        if old.addresses != new.addresses {
            changed.push("addresses");
        }
    }
    (
        json!({ "version": old.map(|o| o.version) }),
        json!({ "version": new.version, "changed": changed }),
    )
}

fn record(shop: &Shop, caller: &Caller, action: &str, w: &Written<Profile>) {
    let (old, new) = changes(w.old.as_ref(), &w.new.value);
    shop.trail.by_user(
        caller,
        action,
        Entity {
            kind: "profile",
            id: caller.user.id,
        },
        Some(old),
        Some(new),
    );
}

/// `GET /api/profile`.
pub(super) async fn get_profile(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    cond: Conditional,
) -> Result<Response<Body>, Problem> {
    let profile = shop.store.profile(caller.user.id).await?;
    Ok(cond.read(profile).into_response())
}

/// `PUT /api/profile`.
pub(super) async fn put_profile(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    cond: Conditional,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let guard = match cond.require() {
        Ok(g) => g,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let doc =
        checked(parse_body(&body)?).map_err(|d| Problem::unprocessable("invalid-profile", d))?;
    match shop
        .store
        .put_profile(caller.user.id, &guard, &doc, shop.now())
        .await
    {
        Ok(w) => {
            record(&shop, &caller, "profile.updated", &w);
            Ok(cond.written::<_, crate::DbError>(Ok(w.new)).into_response())
        }
        Err(WriteError::Database(e)) => Err(Problem::unavailable(e)),
        Err(other) => Ok(cond
            .written::<_, crate::DbError>(Err(other))
            .into_response()),
    }
}

/// `DELETE /api/profile/addresses/{id}`.
pub(super) async fn remove_address(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    cond: Conditional,
    Path(id): Path<String>,
) -> Result<Response<Body>, Problem> {
    let guard = match cond.require() {
        Ok(g) => g,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    match shop
        .store
        .remove_address(caller.user.id, &guard, &id, shop.now())
        .await
    {
        Ok(Some(w)) => {
            record(&shop, &caller, "profile.address_removed", &w);
            Ok(cond.written::<_, crate::DbError>(Ok(w.new)).into_response())
        }
        Ok(None) => Err(Problem::not_found(format!(
            "the profile has no address `{id}`"
        ))),
        Err(WriteError::Database(e)) => Err(Problem::unavailable(e)),
        Err(other) => Ok(cond
            .written::<_, crate::DbError>(Err(other))
            .into_response()),
    }
}

/// `PUT /api/profile/notes`: saved only when `seq` is higher than every save stored, so a
/// slow older save never overwrites a newer one (409 `stale-save`, nothing written).
pub(super) async fn put_notes(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let notes: NotesBody = parse_body(&body)?;
    if notes.notes.chars().count() > 10_000 {
        return Err(Problem::unprocessable(
            "invalid-notes",
            "`notes` must be at most 10000 characters",
        ));
    }
    if notes.seq > i64::MAX as u64 {
        return Err(Problem::unprocessable(
            "invalid-notes",
            "`seq` is too large",
        ));
    }
    match shop
        .store
        .save_notes(caller.user.id, &notes.notes, notes.seq, shop.now())
        .await?
    {
        NotesSaved::Saved(saved) => {
            shop.trail.by_user(
                &caller,
                "profile.notes_saved",
                Entity {
                    kind: "profile",
                    id: caller.user.id,
                },
                None,
                Some(json!({ "seq": saved.seq })),
            );
            Ok(json_answer(StatusCode::OK, &saved))
        }
        NotesSaved::Stale { current_seq } => Err(Problem::new(
            StatusCode::CONFLICT,
            "stale-save",
            "A newer save is stored",
            format!(
                "save {} arrived after save {current_seq}: nothing was written",
                notes.seq
            ),
        )
        .with("seq", current_seq)),
    }
}

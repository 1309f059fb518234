//! `GET /api/openapi.json`: the API of docs/shop-api.md as an OpenAPI 3.1 document, written
//! by hand (a test checks that it names every route of the router, and nothing else).

use serde_json::{json, Map, Value};

/// What one operation needs besides its own description.
#[derive(Clone, Copy, Default)]
struct Needs {
    /// `X-Shop-User`.
    user: bool,
    /// `Idempotency-Key`.
    key: bool,
    /// `If-Match` (428 without).
    if_match: bool,
    /// Reads the order history (`X-Consistency-Token` in, consistency headers out).
    consistent: bool,
}

const USER: Needs = Needs {
    user: true,
    key: false,
    if_match: false,
    consistent: false,
};

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn content(s: Value) -> Value {
    json!({ "application/json": { "schema": s } })
}

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": schema("Problem") } },
    })
}

fn ok(description: &str, s: Value) -> Value {
    json!({ "description": description, "content": content(s) })
}

/// One operation: its summary, what it needs, its body, and its answers.
fn op(
    summary: &str,
    needs: Needs,
    body: Option<Value>,
    mut responses: Vec<(&str, Value)>,
) -> Value {
    let mut parameters = Vec::new();
    if needs.user {
        parameters.push(json!({ "$ref": "#/components/parameters/User" }));
        responses.push((
            "401",
            problem("`urn:oncely:shop:unknown-user`: X-Shop-User missing or unknown"),
        ));
    }
    if needs.key {
        parameters.push(json!({ "$ref": "#/components/parameters/IdempotencyKey" }));
        responses.push(("400", problem("no Idempotency-Key (`urn:oncely:problem:missing-idempotency-key`), or a body that does not read")));
        responses.push(("409", problem("the same key is still in progress (`urn:oncely:problem:request-in-progress`, with Retry-After), or the shop's own conflict")));
        responses.push((
            "422",
            problem("the key was used with another body, or the body is not acceptable"),
        ));
    }
    if needs.if_match {
        parameters.push(json!({ "$ref": "#/components/parameters/IfMatch" }));
        responses.push(("412", problem("`precondition-failed`: the version moved; `current`, `changed_by`, `changed_at`, `etag`, `version` say to what")));
        responses.push(("428", problem("`precondition-required`: no If-Match")));
    }
    if needs.consistent {
        parameters.push(json!({ "$ref": "#/components/parameters/ConsistencyToken" }));
    }
    responses.push((
        "503",
        problem("a store or service failed; retry after Retry-After"),
    ));
    let mut answers = Map::new();
    for (status, mut r) in responses {
        if needs.consistent && status == "200" {
            r["headers"] = json!({
                "X-Consistency": { "$ref": "#/components/headers/Consistency" },
                "X-Read-Model-Position": { "$ref": "#/components/headers/ReadModelPosition" },
            });
        }
        answers.entry(status.to_owned()).or_insert(r);
    }
    let mut o = json!({ "summary": summary, "parameters": parameters, "responses": answers });
    if let Some(b) = body {
        o["requestBody"] = json!({ "required": true, "content": content(b) });
    }
    o
}

/// Every operation: (method, path, operation).
fn operations() -> Vec<(&'static str, &'static str, Value)> {
    let with_key = Needs { key: true, ..USER };
    let with_if_match = Needs {
        if_match: true,
        ..USER
    };
    let consistent = Needs {
        consistent: true,
        ..USER
    };
    let token =
        json!({ "X-Consistency-Token": { "$ref": "#/components/headers/ConsistencyToken" } });
    let mut checkout_201 = ok(
        "confirmed; the cart is emptied",
        schema("CheckoutConfirmed"),
    );
    checkout_201["headers"] = token.clone();
    let mut checkout_202 = ok(
        "still running (the provider is slow): follow Location",
        schema("CheckoutPending"),
    );
    checkout_202["headers"] = token.clone();
    let mut declined = problem("`urn:oncely:shop:card-declined`, with `checkout` and `order`: the saga compensated (stock released, order cancelled)");
    declined["headers"] = token.clone();
    let mut cancelled = ok(
        "cancelled: refunded through the provider, stock released",
        schema("Order"),
    );
    cancelled["headers"] = token.clone();
    let mut progress = ok("the progress", schema("CheckoutProgress"));
    progress["headers"] = token;
    vec![
        ("get", "/api/users", op("The shop's named users (no user header needed)", Needs::default(),
            None, vec![("200", ok("the users", json!({ "type": "array", "items": schema("User") })))])),
        ("get", "/api/products", op("The products, with the inventory's live stock", USER,
            None, vec![("200", ok("the products", json!({ "type": "array", "items": schema("Product") })))])),
        ("get", "/api/favourites", op("The caller's favourite products", USER,
            None, vec![("200", ok("the favourites", schema("Favourites")))])),
        ("put", "/api/favourites/{product}", op("Adds a favourite", USER, None, vec![
            ("204", json!({ "description": "added (or there already)" })),
            ("404", problem("no such product")),
            ("503", problem("`urn:oncely:shop:injected-failure` while chaos favourites_fail is on: nothing stored")),
        ])),
        ("delete", "/api/favourites/{product}", op("Removes a favourite", USER, None, vec![
            ("204", json!({ "description": "removed (or not there)" })),
            ("404", problem("no such product")),
            ("503", problem("`urn:oncely:shop:injected-failure` while chaos favourites_fail is on: nothing stored")),
        ])),
        ("get", "/api/cart", op("The caller's cart, with ETag and Last-Modified", USER, None, vec![
            ("200", ok("the cart", schema("Cart"))),
            ("304", json!({ "description": "If-None-Match names the current version" })),
        ])),
        ("put", "/api/cart", op("Replaces the cart's items", with_if_match, Some(schema("CartChange")), vec![
            ("200", ok("the new cart, with its ETag", schema("Cart"))),
            ("400", problem("a body that does not read, or a malformed If-Match")),
            ("422", problem("`urn:oncely:shop:invalid-cart`: unknown product, qty outside 1-99, a product twice")),
        ])),
        ("post", "/api/checkout", op("Checks out: the saga across the shop, the inventory and the provider", with_key,
            Some(schema("CheckoutRequest")), vec![
            ("201", checkout_201),
            ("202", checkout_202),
            ("402", declined),
            ("409", problem("`urn:oncely:shop:out-of-stock`, or the key still in progress")),
        ])),
        ("get", "/api/checkouts/{id}", op("A checkout's progress, from the saga's own store", USER, None, vec![
            ("200", progress),
            ("404", problem("no such checkout of the caller's")),
        ])),
        ("get", "/api/orders", op("The caller's order history (the read model), newest first", consistent, None, vec![
            ("200", ok("the orders", json!({ "type": "array", "items": schema("Order") }))),
            ("400", problem("`urn:oncely:shop:invalid-consistency-token`")),
        ])),
        ("get", "/api/orders/{id}", op("One order of the history, with its audit events", consistent, None, vec![
            ("200", ok("the order", schema("OrderWithHistory"))),
            ("400", problem("`urn:oncely:shop:invalid-consistency-token`")),
            ("404", problem("not in the caller's history (yet)")),
        ])),
        ("post", "/api/orders/{id}/cancel", op("Cancels a confirmed order (a retry under the key of the cancel that cancelled it answers 200 again)", with_key, None, vec![
            ("200", cancelled),
            ("404", problem("no such order")),
            ("409", problem("`urn:oncely:shop:not-cancellable`: cancelled already (by anything but this key's cancel), still checking out, or not the caller's")),
        ])),
        ("get", "/api/profile", op("The caller's profile, with ETag and Last-Modified", USER, None, vec![
            ("200", ok("the profile", schema("Profile"))),
            ("304", json!({ "description": "If-None-Match names the current version" })),
        ])),
        ("put", "/api/profile", op("Replaces the profile (notes and version fields are ignored)", with_if_match,
            Some(schema("ProfileChange")), vec![
            ("200", ok("the new profile, with its ETag", schema("Profile"))),
            ("400", problem("a body that does not read, or a malformed If-Match")),
            ("422", problem("`urn:oncely:shop:invalid-profile`")),
        ])),
        ("put", "/api/profile/notes", op("Autosaves the notes; the highest seq wins", USER, Some(schema("NotesChange")), vec![
            ("200", ok("saved", schema("Notes"))),
            ("400", problem("a body that does not read")),
            ("409", problem("`urn:oncely:shop:stale-save`: a save with this or a higher seq is stored; nothing written (`seq` is the stored one)")),
        ])),
        ("delete", "/api/profile/addresses/{id}", op("Removes an address", with_if_match, None, vec![
            ("200", ok("the new profile, with its ETag", schema("Profile"))),
            ("404", problem("no such address")),
        ])),
        ("get", "/api/notifications", op("The caller's notifications, written once per event by an inbox consumer", USER, None, vec![
            ("200", ok("the notifications", json!({ "type": "array", "items": schema("Notification") }))),
        ])),
        ("get", "/api/audit", op("Audit events about one of the caller's own entities (`?entity=order:ord_…`, `cart:ada`, `profile:ada`, `favourites:ada`), or the events the caller caused", USER, None, vec![
            ("200", ok("the events, newest first", json!({ "type": "array", "items": schema("AuditEvent") }))),
            ("400", problem("`entity` empty or too long")),
            ("404", problem("`urn:oncely:shop:not-found`: not an entity of the caller's")),
        ])),
        ("post", "/api/audit/redact", op("Redacts one user's personal fields (actor, client address, user agent)", USER,
            Some(json!({ "type": "object", "required": ["user"], "properties": { "user": { "type": "string" } } })), vec![
            ("200", ok("how many events were redacted", json!({ "type": "object" }))),
            ("422", problem("`urn:oncely:shop:unknown-user`")),
        ])),
        ("get", "/api/admin/reconciliation", op("The payments reconciliation: the last run and the findings", USER, None, vec![
            ("200", ok("the dashboard", schema("Reconciliation"))),
        ])),
        ("post", "/api/admin/reconciliation/run", op("Runs the payments reconciliation now", USER, None, vec![
            ("200", ok("the run", schema("ReconciliationRun"))),
            ("409", problem("`urn:oncely:shop:reconciliation-busy`")),
        ])),
        ("get", "/api/admin/outbox", op("The outbox and the order history's positions", USER, None, vec![
            ("200", ok("the counts", schema("Outbox"))),
        ])),
        ("get", "/api/admin/provider", op("The fake payment provider's books: every charge and refund it executed", USER, None, vec![
            ("200", ok("the books", schema("ProviderBooks"))),
        ])),
        ("get", "/api/chaos", op("The fault switches", USER, None, vec![
            ("200", ok("the switches", schema("Chaos"))),
        ])),
        ("put", "/api/chaos", op("Sets the switches the body names; the others stay", USER, Some(schema("Chaos")), vec![
            ("200", ok("the switches", schema("Chaos"))),
            ("400", problem("an unknown switch or a wrong type")),
        ])),
        ("post", "/api/reset", op("Back to the seed data (the audit trail stays)", USER, None, vec![
            ("200", ok("reset", json!({ "type": "object" }))),
        ])),
        ("get", "/api/openapi.json", op("This document", Needs::default(), None, vec![
            ("200", ok("OpenAPI 3.1", json!({ "type": "object" }))),
        ])),
    ]
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn schemas() -> Value {
    let string = json!({ "type": "string" });
    let int = json!({ "type": "integer", "minimum": 0 });
    let time = json!({ "type": "string", "format": "date-time" });
    let line = object(
        &["product", "qty"],
        json!({
            "product": string, "qty": { "type": "integer", "minimum": 1, "maximum": 99 },
        }),
    );
    let address = object(&["line"], json!({ "id": string, "line": string }));
    json!({
        "Problem": object(&["type", "title", "status"], json!({
            "type": string, "title": string, "status": int, "detail": string,
        })),
        "User": object(&["id", "name"], json!({ "id": string, "name": string })),
        "Product": object(&["id", "name", "price_cents", "stock", "description"], json!({
            "id": string, "name": string, "price_cents": int, "stock": int, "description": string,
        })),
        "Favourites": object(&["products"], json!({ "products": { "type": "array", "items": string } })),
        "Line": line,
        "Cart": object(&["items", "version"], json!({
            "items": { "type": "array", "items": schema("Line") }, "version": int,
        })),
        "CartChange": object(&["items"], json!({ "items": { "type": "array", "items": schema("Line") } })),
        "CheckoutRequest": object(&["card", "items"], json!({
            "card": { "type": "string", "examples": ["tok_ok", "tok_declined"] },
            "items": { "type": "array", "items": schema("Line") },
        })),
        "CheckoutConfirmed": object(&["checkout", "order", "status", "total_cents"], json!({
            "checkout": string, "order": string, "status": { "const": "confirmed" }, "total_cents": int,
        })),
        "CheckoutPending": object(&["checkout", "status"], json!({
            "checkout": string, "order": string, "status": { "const": "pending" },
        })),
        "CheckoutProgress": object(&["checkout", "order", "status", "steps", "updated_at"], json!({
            "checkout": string, "order": string,
            "status": { "enum": ["running", "confirmed", "declined", "cancelled", "failed"] },
            "reason": { "type": ["string", "null"] },
            "steps": { "type": "array", "items": object(&["name", "state", "attempts"], json!({
                "name": string,
                "state": { "enum": ["pending", "running", "done", "failed", "compensating", "compensated"] },
                "attempts": int,
            })) },
            "updated_at": time,
        })),
        "Order": object(&["id", "status", "payment", "total_cents", "items", "created_at", "updated_at"], json!({
            "id": string,
            "status": { "enum": ["pending", "confirmed", "cancelled"] },
            "payment": { "enum": ["pending", "paid", "refunded", "failed"] },
            "total_cents": int, "items": { "type": "array", "items": schema("Line") },
            "created_at": time, "updated_at": time,
        })),
        "OrderWithHistory": { "allOf": [schema("Order"), object(&["history"], json!({
            "history": { "type": "array", "items": schema("AuditEvent") },
        }))] },
        "Address": address,
        "Profile": object(&["name", "email", "notes", "addresses", "version", "updated_by", "updated_at"], json!({
            "name": string, "email": string, "notes": string, "notes_seq": int,
            "addresses": { "type": "array", "items": schema("Address") },
            "version": int, "updated_by": { "type": ["string", "null"] }, "updated_at": time,
        })),
        "ProfileChange": object(&["name", "email", "addresses"], json!({
            "name": string, "email": string,
            "addresses": { "type": "array", "items": schema("Address") },
        })),
        "NotesChange": object(&["notes", "seq"], json!({ "notes": string, "seq": int })),
        "Notes": object(&["notes", "seq", "saved_at"], json!({ "notes": string, "seq": int, "saved_at": time })),
        "Notification": object(&["id", "text", "order", "at"], json!({
            "id": string, "text": string, "order": { "type": ["string", "null"] }, "at": time,
        })),
        "AuditEvent": object(&["id", "at", "actor", "action", "entity", "old", "new", "correlation_id", "client_addr", "user_agent"], json!({
            "id": string, "at": time, "actor": { "type": ["string", "null"] }, "actor_type": string,
            "action": string, "entity": string, "old": {}, "new": {},
            "correlation_id": { "type": ["string", "null"] },
            "client_addr": { "type": ["string", "null"] }, "user_agent": { "type": ["string", "null"] },
            "redacted": { "type": "boolean" },
        })),
        "ReconciliationRun": object(&["id", "started_at", "finished_at", "status", "checked", "mismatches_by_class"], json!({
            "id": int, "started_at": time, "finished_at": { "type": ["string", "null"], "format": "date-time" },
            "status": { "enum": ["running", "clean", "drift", "failed"] }, "checked": int,
            "mismatches_by_class": { "type": "object", "additionalProperties": int },
        })),
        "Finding": object(&["id", "class", "key", "detail", "first_seen"], json!({
            "id": int, "class": string, "key": string, "state": string, "detail": {}, "first_seen": time,
        })),
        "Reconciliation": object(&["last_run", "open_findings"], json!({
            "last_run": { "oneOf": [schema("ReconciliationRun"), { "type": "null" }] },
            "open_findings": { "type": "array", "items": schema("Finding") },
            "recent_findings": { "type": "array", "items": schema("Finding") },
        })),
        "ProviderBooks": object(&["charges", "refunds"], json!({
            "charges": { "type": "array", "items": { "type": "object" } },
            "refunds": { "type": "array", "items": { "type": "object" } },
        })),
        "Outbox": object(&["pending", "oldest_pending_age_ms", "published", "read_model_position", "outbox_position"], json!({
            "pending": int, "oldest_pending_age_ms": int, "published": int, "dead": int,
            "read_model_position": int, "outbox_position": int,
        })),
        "Chaos": { "type": "object", "additionalProperties": false, "properties": {
            "provider_slow_ms": int, "provider_fail_next": int, "provider_timeout_next": int,
            "webhook_drop_next": int, "webhook_duplicate_next": int,
            "webhook_reorder": { "type": "boolean" }, "favourites_fail": { "type": "boolean" },
        } },
    })
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, operation) in operations() {
        let entry = paths
            .entry(path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "oncely shop",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The reference shop's API (docs/shop-api.md). Errors are RFC 9457 problem+json.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "parameters": {
                "User": { "name": "X-Shop-User", "in": "header", "required": true,
                    "schema": { "enum": crate::catalog::USERS.iter().map(|u| u.id).collect::<Vec<_>>() } },
                "IdempotencyKey": { "name": "Idempotency-Key", "in": "header", "required": true,
                    "schema": { "type": "string", "minLength": 1, "maxLength": 255 } },
                "IfMatch": { "name": "If-Match", "in": "header", "required": true,
                    "description": "the ETag of a read (`\"v3\"`)", "schema": { "type": "string" } },
                "ConsistencyToken": { "name": "X-Consistency-Token", "in": "header", "required": false,
                    "description": "a write's token: the read waits up to 2 s for the history to reach it",
                    "schema": { "type": "integer", "minimum": 0 } },
            },
            "headers": {
                "ConsistencyToken": { "description": "the outbox position of the write's event",
                    "schema": { "type": "integer" } },
                "Consistency": { "description": "fresh, stale (the wait ran out) or eventual (no token)",
                    "schema": { "enum": ["fresh", "stale", "eventual"] } },
                "ReadModelPosition": { "description": "every event up to here is in the history",
                    "schema": { "type": "integer" } },
            },
        },
    })
}

/// The (method, path) pairs the document describes, upper-case methods.
pub(crate) fn described() -> Vec<(String, String)> {
    operations()
        .into_iter()
        .map(|(m, p, _)| (m.to_ascii_uppercase(), p.to_owned()))
        .collect()
}

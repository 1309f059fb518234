//! The shop's documents, as its tables hold them and its API answers them.

use serde::{Deserialize, Serialize};

/// One line of a cart or an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The product's id.
    pub product: String,
    /// How many, 1-99.
    pub qty: u32,
}

/// Checks lines as a cart or a checkout takes them: known products, each once, 1-99 of
/// each, at most 50 lines; the error is a 422's detail.
pub fn check_lines(lines: &[Line], allow_empty: bool) -> Result<(), String> {
    if lines.is_empty() && !allow_empty {
        return Err("`items` must hold at least one item".into());
    }
    if lines.len() > 50 {
        return Err("`items` must hold at most 50 items".into());
    }
    for (i, line) in lines.iter().enumerate() {
        if crate::catalog::product(&line.product).is_none() {
            return Err(format!("unknown product `{}`", line.product));
        }
        if !(1..=99).contains(&line.qty) {
            return Err(format!("`qty` of `{}` must be 1-99", line.product));
        }
        if lines[..i].iter().any(|l| l.product == line.product) {
            return Err(format!(
                "`{}` is listed twice: name each product once",
                line.product
            ));
        }
    }
    Ok(())
}

/// A cart as `GET /api/cart` answers it (its ETag is `"v{version}"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cart {
    /// What is in it.
    pub items: Vec<Line>,
    /// Its version.
    pub version: u64,
}

/// One of a profile's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Its id (`addr_…`); a new address sent without one gets one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The address, on one line.
    pub line: String,
}

/// The versioned part of a profile: what `PUT /api/profile` replaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileDoc {
    /// The display name.
    pub name: String,
    /// The e-mail address (receipts go there).
    pub email: String,
    /// The addresses.
    pub addresses: Vec<Address>,
}

/// A profile as `GET /api/profile` answers it (its ETag is `"v{version}"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// The display name.
    pub name: String,
    /// The e-mail address.
    pub email: String,
    /// The notes, saved by autosave (`PUT /api/profile/notes`) outside the version.
    pub notes: String,
    /// The sequence number of the notes' last save: an autosaver that starts again (a
    /// reloaded page) numbers its saves from here, or they are all older.
    pub notes_seq: u64,
    /// The addresses.
    pub addresses: Vec<Address>,
    /// Its version.
    pub version: u64,
    /// Who wrote it last.
    pub updated_by: Option<String>,
    /// When, RFC 3339.
    pub updated_at: String,
}

/// Autosaved notes, as `PUT /api/profile/notes` answers them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notes {
    /// The text.
    pub notes: String,
    /// The save's sequence number, the highest the shop has seen for the user.
    pub seq: u64,
    /// When it was saved, RFC 3339.
    pub saved_at: String,
}

/// An order as the shop's own table keeps it beside the checkout's: whose it is and where
/// its payment stands (paid is what the provider's webhook, or a reconciliation heal,
/// says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopOrder {
    /// `ord_…`.
    pub id: String,
    /// The buyer.
    pub user: String,
    /// The checkout (saga) that placed it.
    pub checkout: String,
    /// What was ordered.
    pub items: Vec<Line>,
    /// The total in cents.
    pub total_cents: u64,
    /// `pending`, `paid`, `refunded`.
    pub payment: String,
    /// The provider's charge, once paid.
    pub charge_id: Option<String>,
    /// When it was placed (ms since the epoch).
    pub created_at: i64,
    /// The `Idempotency-Key` of the buyer's cancel that refunded it.
    pub cancel_key: Option<String>,
}

/// An order as the order history (the read model) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    /// `ord_…`.
    pub id: String,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// `pending`, `paid`, `refunded` or `failed`.
    pub payment: String,
    /// The total in cents.
    pub total_cents: u64,
    /// What was ordered.
    pub items: Vec<Line>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A notification, written by the notifications consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// `ntf_N`.
    pub id: String,
    /// What happened, in a sentence.
    pub text: String,
    /// The order it is about.
    pub order: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// Where the outbox and the order history stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Positions {
    /// The position of the newest event enqueued.
    pub outbox: u64,
    /// Every event up to this position is in the order history.
    pub read_model: u64,
}

/// An order as reconciliation sees our side of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRow {
    /// `ord_…`, the match key.
    pub order: String,
    /// The total in cents.
    pub amount: u64,
    /// In the job's vocabulary: `pending`, `paid`, `cancelled`.
    pub status: String,
    /// When the order was placed (ms).
    pub at: i64,
}

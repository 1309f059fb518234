//! The example's integration tests, in one binary: the checkout saga across three HTTP
//! services killed at every boundary (`saga`), and the payments reconciliation job against
//! a provider whose webhooks are lost, duplicated and late (`reconcile`).

mod reconcile;
mod saga;

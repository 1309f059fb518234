//! The shop over real HTTP, against the real service on a temporary SQLite file: the
//! contract of docs/shop-api.md row by row, and what the shop must survive (concurrent
//! duplicates, declined cards, a slow provider, lost and repeated webhooks, redelivered
//! events, stale edits, bad input).

mod audit;
mod chaos;
mod checkout;
mod common;
mod consistency;
mod contract;
mod documents;
mod openapi;

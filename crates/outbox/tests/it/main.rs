//! The integration tests of this crate, in one binary: the conformance suite on SQLite and
//! PostgreSQL, what only PostgreSQL can show (transactions that overlap), the relay, the
//! inbox, and the publishers against the machine's NATS and RabbitMQ.

mod amqp;
mod consume;
mod inbox;
mod nats;
mod postgres;
mod relay;
mod sqlite;
mod webhook;

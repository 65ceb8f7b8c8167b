//! Integration tests of the committed reader. The ones that need a broker
//! read its address from `EXACTLY_KAFKA_BOOTSTRAP` and fail (never skip)
//! when it does not answer: start it with `scripts/kafka-up`. The others
//! talk to small fake brokers on the loopback interface.

mod broker_behaviour;
mod common;
mod errors;
mod read_committed;
mod secured;
mod sink;
mod source;
mod transaction_version;
mod wordcount;

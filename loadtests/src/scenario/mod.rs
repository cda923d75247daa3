//! The scenarios, one module each, sharing [`common`].

pub mod common;
pub mod compare;
pub mod connect;
pub mod drain;
pub mod fanout;
pub mod rebalance;
pub mod storm;
pub mod throughput;

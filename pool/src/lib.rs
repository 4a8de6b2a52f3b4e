//! The Tidepool pool daemon.

pub mod repository;

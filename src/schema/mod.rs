//! How events become rows: names, flattening, table routing, discards.

pub mod intern;
pub mod names;
pub mod rows;

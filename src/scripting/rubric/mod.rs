//! The rubric contract: `criteria(task)` declares what a review asks; the server checks every
//! declarative rule itself (types, ranges, required, lengths, spans inside their text); optional
//! `validate(task, answer)` adds cross-field rules and `score(task, answer)` computes numbers.
//!
//! - `schema`: the criterion kinds and their definitions, and paths into a task's data;
//! - `validate`: the declarative checks of an answer, in Rust;
//! - `calls`: calling the script's entry points and checking what they return.

mod calls;
mod schema;
mod validate;

pub use calls::*;
pub use schema::*;
pub use validate::*;

//! The operator's shell of instance 0, without the hardware: what a key press means, how the
//! line being typed changes, and what a typed line asks for.
//!
//! ```text
//!  serial bytes ──► AnsiDecoder ─┐
//!                                ├─► Key ──► LineEditor ──► Edit::Submit(line) ──► parse() ──► Command
//!  PS/2 scancodes ► Set1Decoder ─┘                 │
//!                                                  └─► Edit::Echo / Edit::Redraw (what to show)
//! ```
//!
//! The kernel (`kernel/src/shell/`) feeds bytes from COM1 and scancodes from the PS/2
//! controller, draws what the editor says to draw, and carries out the [`Command`]s through the
//! messaging layer. Everything here is `no_std` + `alloc`, has no `unsafe`, and is tested on the
//! host: every input, however malformed, gives either a command or a [`UsageError`] that says
//! what was wrong and shows the usage.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod command;
mod editor;
mod keys;

/// The shell's prompt (what the console test waits for before typing).
pub const PROMPT: &str = "mk> ";

pub use command::{
    COMMANDS, Command, CommandInfo, GrantSpec, InstanceId, UsageError, format_size, parse,
    parse_size,
};
pub use editor::{Edit, HISTORY_LEN, LineEditor, MAX_LINE};
pub use keys::{AnsiDecoder, Key, Set1Decoder};

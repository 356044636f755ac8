//! The operator's shell, on instance 0: reads keys from the serial console (COM1) and from a
//! PS/2 keyboard, edits the line, runs commands through the messaging layer.
//!
//! It runs in the serve loop's idle hook (thread context, between drains of the mailboxes), so
//! a command may send, call and wait like any service, while the messages that arrive meanwhile
//! are still handled (`messaging::call` drains while it waits). Keys are polled: the serve loop
//! wakes at least on every timer tick (100 Hz), which is fast enough for typing and needs no
//! interrupt line of the IO APIC (so every line stays free for the IRQ services to move).
//!
//! The line logic (decoding, editing, history, parsing) is the host-tested `mk-shell` crate;
//! this module only moves bytes and draws. `commands.rs` carries the commands out.

#![forbid(unsafe_code)]

mod commands;

use alloc::string::String;

use mk_shell::{AnsiDecoder, Edit, Key, LineEditor, Set1Decoder};
use spin::Mutex;

use crate::console;
use crate::platform::ps2;

use mk_shell::PROMPT;

struct Shell {
    editor: LineEditor,
    serial: AnsiDecoder,
    keyboard: Set1Decoder,
}

static SHELL: Mutex<Option<Shell>> = Mutex::new(None);

/// Starts the shell on this instance (instance 0): prints the greeting and the prompt, and
/// hooks key polling into the serve loop. The caller then runs `messaging::serve_forever`.
pub fn start() {
    *SHELL.lock() = Some(Shell {
        editor: LineEditor::new(),
        serial: AnsiDecoder::new(),
        keyboard: Set1Decoder::new(),
    });
    ps2::init();
    crate::println!("multikernel shell: type 'help' for the commands");
    show_prompt();
    if let Err(e) = crate::messaging::set_idle_hook(poll) {
        crate::error!("shell: no keyboard input: {e}");
    }
}

/// The serve loop's idle hook: takes every key waiting on either input and acts on it.
fn poll() {
    loop {
        let (edit, line, cursor) = {
            let mut guard = SHELL.lock();
            let Some(shell) = guard.as_mut() else { return };
            let Some(key) = next_key(shell) else { return };
            let edit = shell.editor.key(key);
            (
                edit,
                String::from(shell.editor.line()),
                shell.editor.cursor(),
            )
        };
        // The lock is dropped: a command may take long and drain mailboxes meanwhile.
        match edit {
            Edit::None => {}
            Edit::Bell => console::shell_echo(b"\x07"),
            Edit::Echo(c) => {
                console::shell_echo(&[c]);
                console::shell_input(PROMPT, &line);
            }
            Edit::EraseLast => {
                console::shell_echo(b"\x08 \x08");
                console::shell_input(PROMPT, &line);
            }
            Edit::Redraw => redraw(&line, cursor),
            Edit::Cancelled => {
                console::shell_echo(b"^C\r\n");
                console::shell_commit(PROMPT, "^C");
                show_prompt();
            }
            Edit::Submit(line) => {
                console::shell_echo(b"\r\n");
                console::shell_commit(PROMPT, &line);
                run_line(&line);
                show_prompt();
            }
        }
    }
}

fn next_key(shell: &mut Shell) -> Option<Key> {
    while let Some(byte) = console::serial_read() {
        if let Some(key) = shell.serial.feed(byte) {
            return Some(key);
        }
    }
    while let Some(code) = ps2::read_scancode() {
        if let Some(key) = shell.keyboard.feed(code) {
            return Some(key);
        }
    }
    None
}

fn show_prompt() {
    console::shell_echo(PROMPT.as_bytes());
    console::shell_input(PROMPT, "");
}

/// Redraws the line on the terminal: back to column 0, prompt, line, erase the rest, cursor
/// back to where the editor has it.
fn redraw(line: &str, cursor: usize) {
    let mut out = String::with_capacity(line.len() + 16);
    out.push('\r');
    out.push_str(PROMPT);
    out.push_str(line);
    out.push_str("\x1b[K");
    let back = line.len() - cursor;
    if back > 0 {
        out.push_str(&alloc::format!("\x1b[{back}D"));
    }
    console::shell_echo(out.as_bytes());
    console::shell_input(PROMPT, line);
}

fn run_line(line: &str) {
    match mk_shell::parse(line) {
        Ok(None) => {}
        Ok(Some(command)) => commands::run(command),
        Err(e) => {
            crate::println!("error: {}", e.message);
            if let Some(usage) = e.usage {
                crate::println!("usage: {usage}");
            }
        }
    }
}

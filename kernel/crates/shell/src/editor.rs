//! The line being typed: insertion at the cursor, erasing, moving, and a history recalled with
//! the arrow keys, bash-style (Up walks back, Down walks forward to the line being drafted).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use crate::Key;

/// Longest line the editor accepts; further characters are refused (the terminal beeps).
pub const MAX_LINE: usize = 160;

/// Lines the history keeps.
pub const HISTORY_LEN: usize = 32;

/// What a key did, and so what the terminal must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Nothing visible changed.
    None,
    /// The line refused the key (full, nothing to erase, no older history): ring the bell.
    Bell,
    /// This character was appended at the end of the line: echo it.
    Echo(u8),
    /// The last character was erased at the end of the line: back up one cell.
    EraseLast,
    /// The line or the cursor changed otherwise: redraw the whole line.
    Redraw,
    /// Enter: the line was taken (and added to the history); a fresh empty line starts.
    Submit(String),
    /// Ctrl-C: the line was dropped; a fresh empty line starts.
    Cancelled,
}

/// A single-line editor with history.
#[derive(Debug, Default)]
pub struct LineEditor {
    line: Vec<u8>,
    cursor: usize,
    history: VecDeque<String>,
    /// While browsing the history: how far back (1 = the newest entry).
    browsing: usize,
    /// The line being typed when browsing started, given back by Down past the newest entry.
    draft: Vec<u8>,
}

impl LineEditor {
    pub fn new() -> Self {
        Self::default()
    }

    /// The line as typed so far (ASCII only: the decoders give nothing else).
    pub fn line(&self) -> &str {
        core::str::from_utf8(&self.line).unwrap_or("")
    }

    /// The cursor, as a character index into `line()`.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &str> {
        self.history.iter().map(String::as_str)
    }

    pub fn key(&mut self, key: Key) -> Edit {
        match key {
            Key::Char(c) => {
                if self.line.len() >= MAX_LINE || !(0x20..=0x7e).contains(&c) {
                    return Edit::Bell;
                }
                self.line.insert(self.cursor, c);
                self.cursor += 1;
                if self.cursor == self.line.len() {
                    Edit::Echo(c)
                } else {
                    Edit::Redraw
                }
            }
            Key::Backspace => {
                if self.cursor == 0 {
                    return Edit::Bell;
                }
                self.cursor -= 1;
                self.line.remove(self.cursor);
                if self.cursor == self.line.len() {
                    Edit::EraseLast
                } else {
                    Edit::Redraw
                }
            }
            Key::Delete => {
                if self.cursor == self.line.len() {
                    return Edit::Bell;
                }
                self.line.remove(self.cursor);
                Edit::Redraw
            }
            Key::Left => self.move_to(self.cursor.checked_sub(1)),
            Key::Right => self.move_to((self.cursor < self.line.len()).then_some(self.cursor + 1)),
            Key::Home => self.move_to(Some(0)),
            Key::End => self.move_to(Some(self.line.len())),
            Key::Up => {
                if self.browsing >= self.history.len() {
                    return Edit::Bell;
                }
                if self.browsing == 0 {
                    self.draft = core::mem::take(&mut self.line);
                }
                self.browsing += 1;
                self.show_history();
                Edit::Redraw
            }
            Key::Down => {
                if self.browsing == 0 {
                    return Edit::Bell;
                }
                self.browsing -= 1;
                if self.browsing == 0 {
                    self.line = core::mem::take(&mut self.draft);
                    self.cursor = self.line.len();
                } else {
                    self.show_history();
                }
                Edit::Redraw
            }
            Key::KillToStart => {
                if self.cursor == 0 {
                    return Edit::None;
                }
                self.line.drain(..self.cursor);
                self.cursor = 0;
                Edit::Redraw
            }
            Key::Redraw => Edit::Redraw,
            Key::Cancel => {
                self.reset();
                Edit::Cancelled
            }
            Key::Enter => {
                let line = String::from(self.line().trim());
                self.reset();
                if !line.is_empty() && self.history.back() != Some(&line) {
                    if self.history.len() == HISTORY_LEN {
                        self.history.pop_front();
                    }
                    self.history.push_back(line.clone());
                }
                Edit::Submit(line)
            }
        }
    }

    fn move_to(&mut self, to: Option<usize>) -> Edit {
        match to {
            Some(c) if c != self.cursor => {
                self.cursor = c;
                Edit::Redraw
            }
            Some(_) => Edit::None,
            None => Edit::Bell,
        }
    }

    fn show_history(&mut self) {
        let entry = &self.history[self.history.len() - self.browsing];
        self.line = entry.as_bytes().to_vec();
        self.cursor = self.line.len();
    }

    fn reset(&mut self) {
        self.line.clear();
        self.draft.clear();
        self.cursor = 0;
        self.browsing = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(e: &mut LineEditor, s: &str) {
        for b in s.bytes() {
            assert_eq!(e.key(Key::Char(b)), Edit::Echo(b));
        }
    }

    fn submit(e: &mut LineEditor) -> String {
        match e.key(Key::Enter) {
            Edit::Submit(s) => s,
            other => panic!("Enter gave {other:?}"),
        }
    }

    #[test]
    fn typing_and_erasing() {
        let mut e = LineEditor::new();
        typed(&mut e, "instx");
        assert_eq!(e.key(Key::Backspace), Edit::EraseLast);
        typed(&mut e, "ances");
        assert_eq!(e.line(), "instances");
        assert_eq!(submit(&mut e), "instances");
        assert_eq!(e.line(), "");
        assert_eq!(e.key(Key::Backspace), Edit::Bell);
    }

    #[test]
    fn editing_in_the_middle() {
        let mut e = LineEditor::new();
        typed(&mut e, "pig 1");
        for _ in 0..3 {
            assert_eq!(e.key(Key::Left), Edit::Redraw);
        }
        assert_eq!(e.key(Key::Char(b'n')), Edit::Redraw);
        assert_eq!(e.line(), "ping 1");
        assert_eq!(e.key(Key::Home), Edit::Redraw);
        assert_eq!(e.key(Key::Left), Edit::Bell);
        assert_eq!(e.key(Key::Delete), Edit::Redraw);
        assert_eq!(e.line(), "ing 1");
        assert_eq!(e.key(Key::Char(b'p')), Edit::Redraw);
        assert_eq!(e.key(Key::End), Edit::Redraw);
        assert_eq!(e.key(Key::Right), Edit::Bell);
        assert_eq!(e.key(Key::Delete), Edit::Bell);
        e.key(Key::Left);
        e.key(Key::Left);
        assert_eq!(e.key(Key::KillToStart), Edit::Redraw);
        assert_eq!((e.line(), e.cursor()), (" 1", 0));
        assert_eq!(e.key(Key::Cancel), Edit::Cancelled);
        assert_eq!(e.line(), "");
    }

    #[test]
    fn history_walks_back_and_returns_to_the_draft() {
        let mut e = LineEditor::new();
        for cmd in ["help", "instances", "instances", "  ", "ping 1 3"] {
            typed(&mut e, cmd);
            submit(&mut e);
        }
        // Blank lines and an immediate repeat are not kept.
        assert_eq!(
            e.history().collect::<Vec<_>>(),
            ["help", "instances", "ping 1 3"]
        );
        typed(&mut e, "st");
        assert_eq!(e.key(Key::Up), Edit::Redraw);
        assert_eq!(e.line(), "ping 1 3");
        e.key(Key::Up);
        e.key(Key::Up);
        assert_eq!(e.line(), "help");
        assert_eq!(e.key(Key::Up), Edit::Bell);
        assert_eq!(e.line(), "help");
        e.key(Key::Down);
        assert_eq!(e.line(), "instances");
        e.key(Key::Down);
        e.key(Key::Down);
        assert_eq!((e.line(), e.cursor()), ("st", 2));
        assert_eq!(e.key(Key::Down), Edit::Bell);
        // A recalled line can be edited and run; the history keeps the original too.
        e.key(Key::Up);
        e.key(Key::Backspace);
        typed(&mut e, "5");
        assert_eq!(submit(&mut e), "ping 1 5");
        assert_eq!(e.history().count(), 4);
    }

    #[test]
    fn bounded_line_and_history() {
        let mut e = LineEditor::new();
        for _ in 0..MAX_LINE {
            e.key(Key::Char(b'x'));
        }
        assert_eq!(e.key(Key::Char(b'y')), Edit::Bell);
        assert_eq!(e.line().len(), MAX_LINE);
        e.key(Key::Cancel);
        for i in 0..HISTORY_LEN + 10 {
            for b in alloc::format!("cmd {i}").bytes() {
                e.key(Key::Char(b));
            }
            submit(&mut e);
        }
        assert_eq!(e.history().count(), HISTORY_LEN);
        assert_eq!(e.history().next(), Some("cmd 10"));
    }
}

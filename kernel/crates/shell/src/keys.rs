//! Key presses from the two inputs the shell has: a serial terminal (bytes, with ANSI escape
//! sequences for the arrow keys) and a PS/2 keyboard (scancode set 1, the set the i8042
//! controller translates to by default, so the one BIOS and QEMU deliver).

/// One key press, as the line editor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable ASCII character (0x20..=0x7e).
    Char(u8),
    Enter,
    Backspace,
    Delete,
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    /// Ctrl-C: drop the line being typed.
    Cancel,
    /// Ctrl-U: erase from the start of the line to the cursor.
    KillToStart,
    /// Ctrl-L: redraw.
    Redraw,
}

/// Decodes what a serial terminal sends: printable bytes, CR or LF (CR LF counts once), DEL or
/// BS, control keys, and the escape sequences `ESC [ A`..`D` (also `ESC O A`..`D`), `ESC [ H`,
/// `ESC [ F`, `ESC [ 1 ~`, `ESC [ 3 ~`, `ESC [ 4 ~`. Bytes of a sequence it does not know are
/// dropped up to the sequence's final byte, never typed into the line.
#[derive(Debug, Default, Clone)]
pub struct AnsiDecoder {
    state: AnsiState,
    last_was_cr: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AnsiState {
    #[default]
    Ground,
    /// After ESC.
    Escape,
    /// After `ESC [` or `ESC O`, with the numeric parameter so far.
    Sequence(u16),
}

impl AnsiDecoder {
    pub const fn new() -> Self {
        Self {
            state: AnsiState::Ground,
            last_was_cr: false,
        }
    }

    /// Feeds one byte; returns the key it completes, if any.
    pub fn feed(&mut self, byte: u8) -> Option<Key> {
        let was_cr = core::mem::replace(&mut self.last_was_cr, false);
        match self.state {
            AnsiState::Ground => match byte {
                0x1b => {
                    self.state = AnsiState::Escape;
                    None
                }
                b'\r' => {
                    self.last_was_cr = true;
                    Some(Key::Enter)
                }
                b'\n' if was_cr => None,
                b'\n' => Some(Key::Enter),
                0x7f | 0x08 => Some(Key::Backspace),
                0x03 => Some(Key::Cancel),
                0x15 => Some(Key::KillToStart),
                0x0c => Some(Key::Redraw),
                0x01 => Some(Key::Home),
                0x05 => Some(Key::End),
                0x20..=0x7e => Some(Key::Char(byte)),
                _ => None,
            },
            AnsiState::Escape => {
                self.state = match byte {
                    b'[' | b'O' => AnsiState::Sequence(0),
                    _ => AnsiState::Ground,
                };
                None
            }
            AnsiState::Sequence(param) => {
                if byte.is_ascii_digit() {
                    let next = param
                        .saturating_mul(10)
                        .saturating_add(u16::from(byte - b'0'));
                    self.state = AnsiState::Sequence(next);
                    return None;
                }
                if byte == b';' {
                    return None;
                }
                self.state = AnsiState::Ground;
                match (byte, param) {
                    (b'A', _) => Some(Key::Up),
                    (b'B', _) => Some(Key::Down),
                    (b'C', _) => Some(Key::Right),
                    (b'D', _) => Some(Key::Left),
                    (b'H', _) | (b'~', 1) | (b'~', 7) => Some(Key::Home),
                    (b'F', _) | (b'~', 4) | (b'~', 8) => Some(Key::End),
                    (b'~', 3) => Some(Key::Delete),
                    // Any other final byte (0x40..=0x7e) ends a sequence we ignore; anything
                    // else is malformed, and ends it too.
                    _ => None,
                }
            }
        }
    }
}

/// Decodes PS/2 scancode set 1 (US layout): make codes give keys, break codes (bit 7) only
/// update the modifier state, `0xE0` prefixes the extended keys (arrows, Home, End, Delete,
/// keypad Enter).
#[derive(Debug, Default, Clone)]
pub struct Set1Decoder {
    shift: bool,
    ctrl: bool,
    caps: bool,
    extended: bool,
}

/// Set 1 make codes 0x00..0x3a to (unshifted, shifted) ASCII; 0 where none.
const SET1: [(u8, u8); 0x3a] = {
    let mut t = [(0u8, 0u8); 0x3a];
    let rows: [(usize, &[u8], &[u8]); 4] = [
        (0x02, b"1234567890-=", b"!@#$%^&*()_+"),
        (0x10, b"qwertyuiop[]", b"QWERTYUIOP{}"),
        (0x1e, b"asdfghjkl;'`", b"ASDFGHJKL:\"~"),
        (0x2b, b"\\zxcvbnm,./", b"|ZXCVBNM<>?"),
    ];
    let mut r = 0;
    while r < rows.len() {
        let (start, lower, upper) = rows[r];
        let mut i = 0;
        while i < lower.len() {
            t[start + i] = (lower[i], upper[i]);
            i += 1;
        }
        r += 1;
    }
    t[0x39] = (b' ', b' ');
    t
};

impl Set1Decoder {
    pub const fn new() -> Self {
        Self {
            shift: false,
            ctrl: false,
            caps: false,
            extended: false,
        }
    }

    /// Feeds one scancode byte; returns the key it completes, if any.
    pub fn feed(&mut self, code: u8) -> Option<Key> {
        if code == 0xe0 {
            self.extended = true;
            return None;
        }
        let extended = core::mem::replace(&mut self.extended, false);
        let released = code & 0x80 != 0;
        let make = code & 0x7f;
        match make {
            0x2a | 0x36 if !extended => {
                self.shift = !released;
                return None;
            }
            0x1d => {
                self.ctrl = !released;
                return None;
            }
            _ => {}
        }
        if released {
            return None;
        }
        if extended {
            return match make {
                0x48 => Some(Key::Up),
                0x50 => Some(Key::Down),
                0x4b => Some(Key::Left),
                0x4d => Some(Key::Right),
                0x47 => Some(Key::Home),
                0x4f => Some(Key::End),
                0x53 => Some(Key::Delete),
                0x1c => Some(Key::Enter),
                0x35 => Some(Key::Char(b'/')),
                _ => None,
            };
        }
        match make {
            0x3a => {
                self.caps = !self.caps;
                None
            }
            0x1c => Some(Key::Enter),
            0x0e => Some(Key::Backspace),
            _ => {
                let &(lower, upper) = SET1.get(usize::from(make))?;
                if lower == 0 {
                    return None;
                }
                if self.ctrl {
                    return match lower {
                        b'c' => Some(Key::Cancel),
                        b'u' => Some(Key::KillToStart),
                        b'l' => Some(Key::Redraw),
                        b'a' => Some(Key::Home),
                        b'e' => Some(Key::End),
                        _ => None,
                    };
                }
                let shifted = self.shift ^ (self.caps && lower.is_ascii_lowercase());
                Some(Key::Char(if shifted { upper } else { lower }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ansi(bytes: &[u8]) -> Vec<Key> {
        let mut d = AnsiDecoder::new();
        bytes.iter().filter_map(|&b| d.feed(b)).collect()
    }

    #[test]
    fn serial_text_and_line_endings() {
        assert_eq!(
            ansi(b"ab\r\ncd\nx\r"),
            vec![
                Key::Char(b'a'),
                Key::Char(b'b'),
                Key::Enter,
                Key::Char(b'c'),
                Key::Char(b'd'),
                Key::Enter,
                Key::Char(b'x'),
                Key::Enter
            ]
        );
        assert_eq!(ansi(b"\r\r"), vec![Key::Enter, Key::Enter]);
        assert_eq!(
            ansi(b"\x7f\x08\x03\x15"),
            vec![
                Key::Backspace,
                Key::Backspace,
                Key::Cancel,
                Key::KillToStart
            ]
        );
    }

    #[test]
    fn serial_escape_sequences() {
        assert_eq!(
            ansi(b"\x1b[A\x1b[B\x1b[C\x1b[D\x1bOA\x1b[3~\x1b[H\x1b[4~"),
            vec![
                Key::Up,
                Key::Down,
                Key::Right,
                Key::Left,
                Key::Up,
                Key::Delete,
                Key::Home,
                Key::End
            ]
        );
        // Unknown sequences (F5, a cursor report) vanish whole: nothing typed.
        assert_eq!(ansi(b"\x1b[15~\x1b[12;40Rz"), vec![Key::Char(b'z')]);
        // A lone ESC followed by a letter drops the letter (Alt-x), then goes on.
        assert_eq!(ansi(b"\x1bxq"), vec![Key::Char(b'q')]);
        // Absurd parameters saturate instead of overflowing.
        assert_eq!(ansi(b"\x1b[99999999999999~k"), vec![Key::Char(b'k')]);
    }

    #[test]
    fn every_byte_sequence_is_safe() {
        let mut d = AnsiDecoder::new();
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = d.feed(a);
                let _ = d.feed(b);
            }
        }
        // Whatever state it was left in, a plain line still comes through after a reset key.
        let _ = d.feed(b'~');
        assert_eq!(d.feed(b'\r'), Some(Key::Enter));
    }

    fn set1(codes: &[u8]) -> Vec<Key> {
        let mut d = Set1Decoder::new();
        codes.iter().filter_map(|&c| d.feed(c)).collect()
    }

    #[test]
    fn scancodes_to_keys() {
        // "hi", Enter: make and break codes.
        assert_eq!(
            set1(&[0x23, 0xa3, 0x17, 0x97, 0x1c, 0x9c]),
            vec![Key::Char(b'h'), Key::Char(b'i'), Key::Enter]
        );
        // Shift+1 = '!', then shift released: '1'.
        assert_eq!(
            set1(&[0x2a, 0x02, 0x82, 0xaa, 0x02]),
            vec![Key::Char(b'!'), Key::Char(b'1')]
        );
        // Arrows and Delete are E0-prefixed; their break codes give nothing.
        assert_eq!(
            set1(&[
                0xe0, 0x48, 0xe0, 0xc8, 0xe0, 0x50, 0xe0, 0x4b, 0xe0, 0x4d, 0xe0, 0x53
            ]),
            vec![Key::Up, Key::Down, Key::Left, Key::Right, Key::Delete]
        );
        // Caps lock shifts letters only; Ctrl-C cancels.
        assert_eq!(
            set1(&[0x3a, 0x1e, 0x02, 0x1d, 0x2e, 0x9d, 0x2e]),
            vec![
                Key::Char(b'A'),
                Key::Char(b'1'),
                Key::Cancel,
                Key::Char(b'C')
            ]
        );
        assert_eq!(
            set1(&[0x0e, 0x39, 0x0c]),
            vec![Key::Backspace, Key::Char(b' '), Key::Char(b'-')]
        );
        // Keys with no character (F1, Escape) give nothing.
        assert_eq!(set1(&[0x3b, 0x01, 0x58]), vec![]);
    }
}

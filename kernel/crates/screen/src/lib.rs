//! How the framebuffer is shared: one pane per live instance, each instance drawing only in
//! its own. Every instance computes the same layout from the same input (the set of live
//! instances, read from the shared region), so no instance tells another where to draw; when an
//! instance starts, stops or dies, each one notices the new set and re-lays its own pane.
//!
//! ```text
//!  1 to 3 instances: one column         4 or more: two columns, left one filled first
//!  +---------------------------+        +-------------+-------------+
//!  | 0 header (id, CPUs, ...)  |        | 0 header    | 2 header    |
//!  | instance 0's log          |        | log         | log         |
//!  +---------------------------+        +-------------+-------------+
//!  | 1 header                  |        | 1 header    | 3 header    |
//!  | instance 1's log          |        | log         | log         |
//!  +---------------------------+        +-------------+-------------+
//! ```
//!
//! The panes tile the screen exactly (no pixel belongs to two panes, none to no pane), so after
//! a re-layout every pixel is redrawn by its new owner. The header's background colour tells
//! the instance (the test harness finds the panes by it in a screenshot).

#![no_std]
#![forbid(unsafe_code)]

/// Most panes on one screen (instances beyond this get none).
pub const MAX_PANES: usize = 16;

/// Height of a pane's header line in pixels (one 16-pixel text row and a 2-pixel border
/// above and below).
pub const HEADER_HEIGHT: usize = 20;

/// A rectangle of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Header background colours (RGB), by instance id modulo their number. Dark enough for light
/// text, far enough apart for a screenshot to tell them apart exactly.
pub const HEADER_COLORS: [[u8; 3]; 8] = [
    [0x20, 0x40, 0x90],
    [0x90, 0x30, 0x30],
    [0x20, 0x70, 0x30],
    [0x70, 0x30, 0x80],
    [0x80, 0x60, 0x10],
    [0x10, 0x60, 0x70],
    [0x60, 0x60, 0x60],
    [0x90, 0x20, 0x60],
];

/// Header colour of instance `id`.
pub const fn header_color(id: usize) -> [u8; 3] {
    HEADER_COLORS[id % HEADER_COLORS.len()]
}

/// The panes for the `live` instances (ascending ids, at most [`MAX_PANES`] used) on a
/// `width` x `height` screen: `(instance, rect)` in the order of `live`, left column top to
/// bottom first. Returns how many entries of `out` it filled.
pub fn layout(
    width: usize,
    height: usize,
    live: &[usize],
    out: &mut [(usize, Rect); MAX_PANES],
) -> usize {
    let n = live.len().min(MAX_PANES);
    if n == 0 || width == 0 || height == 0 {
        return 0;
    }
    let columns = if n <= 3 { 1 } else { 2 };
    let left = n.div_ceil(columns);
    let mut i = 0;
    for c in 0..columns {
        let x = width * c / columns;
        let w = width * (c + 1) / columns - x;
        let in_column = if c == 0 { left } else { n - left };
        for r in 0..in_column {
            let y = height * r / in_column;
            let h = height * (r + 1) / in_column - y;
            out[i] = (live[i], Rect { x, y, w, h });
            i += 1;
        }
    }
    n
}

/// Instance `me`'s pane among the `live` instances, if it has one.
pub fn pane_of(me: usize, width: usize, height: usize, live: &[usize]) -> Option<Rect> {
    let mut out = [(0, Rect::default()); MAX_PANES];
    let n = layout(width, height, live, &mut out);
    out[..n].iter().find(|(id, _)| *id == me).map(|(_, r)| *r)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    fn panes(w: usize, h: usize, live: &[usize]) -> Vec<(usize, Rect)> {
        let mut out = [(0, Rect::default()); MAX_PANES];
        let n = layout(w, h, live, &mut out);
        out[..n].to_vec()
    }

    /// Every pixel of the screen belongs to exactly one pane.
    fn assert_tiles(w: usize, h: usize, p: &[(usize, Rect)]) {
        let mut owner = std::vec![0u8; w * h];
        for (_, r) in p {
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    owner[y * w + x] += 1;
                }
            }
        }
        assert!(owner.iter().all(|&c| c == 1), "{p:?}");
    }

    #[test]
    fn one_column_up_to_three() {
        let p = panes(1280, 800, &[0, 1, 3]);
        assert_eq!(
            p[0],
            (
                0,
                Rect {
                    x: 0,
                    y: 0,
                    w: 1280,
                    h: 266
                }
            )
        );
        assert_eq!(
            p[1],
            (
                1,
                Rect {
                    x: 0,
                    y: 266,
                    w: 1280,
                    h: 267
                }
            )
        );
        assert_eq!(
            p[2],
            (
                3,
                Rect {
                    x: 0,
                    y: 533,
                    w: 1280,
                    h: 267
                }
            )
        );
        assert_tiles(1280, 800, &p);
        assert_eq!(
            panes(640, 480, &[0]),
            [(
                0,
                Rect {
                    x: 0,
                    y: 0,
                    w: 640,
                    h: 480
                }
            )]
        );
    }

    #[test]
    fn two_columns_from_four() {
        let p = panes(1280, 800, &[0, 1, 2, 3, 5]);
        assert_eq!(
            p[0].1,
            Rect {
                x: 0,
                y: 0,
                w: 640,
                h: 266
            }
        );
        assert_eq!(
            p[3],
            (
                3,
                Rect {
                    x: 640,
                    y: 0,
                    w: 640,
                    h: 400
                }
            )
        );
        assert_eq!(
            p[4],
            (
                5,
                Rect {
                    x: 640,
                    y: 400,
                    w: 640,
                    h: 400
                }
            )
        );
        assert_tiles(1280, 800, &p);
    }

    #[test]
    fn every_count_tiles_and_places_each_once() {
        let ids: Vec<usize> = (0..MAX_PANES + 3).collect();
        for n in 0..=ids.len() {
            let p = panes(333, 211, &ids[..n]);
            assert_eq!(p.len(), n.min(MAX_PANES));
            if n > 0 {
                assert_tiles(333, 211, &p);
            }
            for (i, (id, _)) in p.iter().enumerate() {
                assert_eq!(*id, i);
                assert_eq!(pane_of(i, 333, 211, &ids[..n]), Some(p[i].1));
            }
        }
        assert_eq!(pane_of(7, 100, 100, &[0, 1]), None);
    }

    #[test]
    fn header_colors_differ() {
        for (i, a) in HEADER_COLORS.iter().enumerate() {
            for b in &HEADER_COLORS[i + 1..] {
                assert_ne!(a, b);
            }
            // Never black (the log's background) nor the text's light grey.
            assert!(a.iter().any(|&c| c >= 0x60) && a.iter().all(|&c| c <= 0x90));
        }
    }
}

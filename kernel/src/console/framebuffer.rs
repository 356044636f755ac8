//! The framebuffer console, split into panes: one per live instance, each instance drawing its
//! own log in its own pane under a header line (id, CPUs, memory, state).
//!
//! Every instance maps the same framebuffer (instance 0 gets it from the bootloader and passes
//! its physical address on in the boot descriptor) and computes the same layout from the set of
//! live instances in the shared region (`mk_screen::layout`); nothing tells it where to draw.
//! It draws only under the cross-instance console lock and re-reads that set first, so a
//! re-layout (an instance started, stopped, died) and a line being drawn never overlap: the
//! instance that sees a new set clears its new pane and redraws its header and the tail of its
//! log, kept in a ring of recent lines for that purpose. A dead instance draws nothing more;
//! the panes of the living grow over its old one.
//!
//! Glyphs come from `noto-sans-mono-bitmap` (the font the bootloader itself uses). When a pane
//! is full, its upper half is dropped in one copy: scrolling a line at a time would move the
//! whole pane for every line, which is slow in emulation.

use core::fmt::Write;

use bootloader_api::info::{FrameBuffer, PixelFormat};
use mk_screen::{HEADER_HEIGHT, Rect};
use noto_sans_mono_bitmap::{FontWeight, RasterHeight, get_raster, get_raster_width};
use spin::Mutex;

use crate::platform::descriptor::FramebufferDesc;

const HEIGHT: RasterHeight = RasterHeight::Size16;
const WEIGHT: FontWeight = FontWeight::Regular;
const CHAR_W: usize = get_raster_width(WEIGHT, HEIGHT);
const CHAR_H: usize = HEIGHT.val();
const MARGIN: usize = 4;
/// Log text colour on the black body; header text colour.
const TEXT: [u8; 3] = [0xc8, 0xc8, 0xb0];
const HEADER_TEXT: [u8; 3] = [0xff, 0xff, 0xff];

/// Lines kept for redrawing a pane, and their longest length.
const RING_LINES: usize = 64;
const RING_WIDTH: usize = 200;

/// The pixels: where they are and how they are laid out.
struct Surface {
    buf: &'static mut [u8],
    width: usize,
    height: usize,
    stride: usize,
    bpp: usize,
    format: u32,
}

/// The recent lines of this instance's log.
struct Ring {
    lines: [[u8; RING_WIDTH]; RING_LINES],
    lens: [u8; RING_LINES],
    /// Lines ever pushed (the newest is at `(count - 1) % RING_LINES`).
    count: usize,
}

struct Console {
    surface: Option<Surface>,
    ring: Ring,
    /// The live instances (bit per id) the pane was laid out for, and the pane.
    live: u64,
    pane: Option<Rect>,
    /// Text row of the cursor in the pane's body.
    row: usize,
    /// The header as last drawn.
    header: LineBuf<160>,
    /// One line of pixels being composed before it is copied to the framebuffer.
    scratch: [u8; SCRATCH],
}

/// Bytes of the composing line: 4096 pixels of 4 bytes (wider screens are drawn 4096 wide).
const SCRATCH: usize = 4096 * 4;

static CONSOLE: Mutex<Console> = Mutex::new(Console {
    surface: None,
    ring: Ring {
        lines: [[0; RING_WIDTH]; RING_LINES],
        lens: [0; RING_LINES],
        count: 0,
    },
    live: 0,
    pane: None,
    row: 0,
    header: LineBuf::new(),
    scratch: [0; SCRATCH],
});

/// Formats into a fixed buffer (the console runs before the heap exists).
#[derive(Clone, Copy)]
struct LineBuf<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> LineBuf<N> {
    const fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<const N: usize> Write for LineBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let take = s.len().min(N - self.len);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

fn format_code(f: PixelFormat) -> u32 {
    match f {
        PixelFormat::Rgb => 0,
        PixelFormat::Bgr => 1,
        PixelFormat::U8 => 2,
        _ => 3,
    }
}

/// Instance 0: the bootloader's framebuffer.
pub fn init(fb: FrameBuffer) {
    let info = fb.info();
    let buf = fb.into_buffer();
    buf.fill(0);
    CONSOLE.lock().surface = Some(Surface {
        buf,
        width: info.width,
        height: info.height,
        stride: info.stride,
        bpp: info.bytes_per_pixel,
        format: format_code(info.pixel_format),
    });
}

/// Instance 0: what another instance needs to draw on the same framebuffer (physical address
/// and geometry); `phys == 0` when there is none.
pub fn describe() -> FramebufferDesc {
    let console = CONSOLE.lock();
    let Some(s) = console.surface.as_ref() else {
        return FramebufferDesc::default();
    };
    let Some(phys) = crate::memory::paging::translate(s.buf.as_ptr() as u64) else {
        return FramebufferDesc::default();
    };
    FramebufferDesc {
        phys,
        len: s.buf.len() as u64,
        width: s.width as u32,
        height: s.height as u32,
        stride: s.stride as u32,
        bytes_per_pixel: s.bpp as u32,
        format: s.format,
    }
}

/// Another instance: draws on the framebuffer instance 0 described, mapped at `virt`.
///
/// # Safety
/// `virt` must map `desc.len` bytes of the framebuffer, writable, for the kernel's lifetime,
/// used by nothing but this console.
pub unsafe fn attach(virt: u64, desc: &FramebufferDesc) {
    // SAFETY: the caller's contract: `virt` maps `len` bytes, for ever, for this console only.
    let buf = unsafe { core::slice::from_raw_parts_mut(virt as *mut u8, desc.len as usize) };
    CONSOLE.lock().surface = Some(Surface {
        buf,
        width: desc.width as usize,
        height: desc.height as usize,
        stride: desc.stride as usize,
        bpp: desc.bytes_per_pixel as usize,
        format: desc.format,
    });
}

/// One line of this instance's log (no newline): kept, and drawn in the pane.
pub fn write_line(bytes: &[u8]) {
    CONSOLE.lock().write_line(bytes);
}

/// For the panic path: as `write_line`, unless the console is held (then nothing: the serial
/// port has the line).
pub fn force_write_line(bytes: &[u8]) {
    if let Some(mut console) = CONSOLE.try_lock() {
        console.write_line(bytes);
    }
}

/// Draws `parts` on the cursor's row, over what was there, without moving on: the line the
/// shell is editing. The next line drawn replaces it.
pub fn input_line(parts: &[&[u8]]) {
    let mut c = CONSOLE.lock();
    c.relayout_if_needed();
    c.draw_input(parts);
}

/// Re-lays the pane if the set of live instances changed, and redraws the header if what it
/// says changed (CPUs, memory, state).
pub fn refresh() {
    let mut c = CONSOLE.lock();
    c.relayout_if_needed();
    c.draw_header(false);
}

/// The live instances (booting or running), a bit per id; just this one before the shared
/// region exists (then only instance 0 runs, or an instance not yet attached to it, which
/// has no framebuffer yet either).
fn live_mask() -> u64 {
    let me = crate::instance::id();
    let Some(r) = super::shared::shared() else {
        return 1 << me.index();
    };
    let mut mask = 0;
    for k in r.ids().take(64) {
        if let Ok(i) = r.instance(k)
            && matches!(
                i.state(),
                Ok(mk_shared::InstanceState::Booting | mk_shared::InstanceState::Running)
            )
        {
            mask |= 1 << k.index();
        }
    }
    // Instance 0 runs as long as the machine does. Any other instance draws only while the
    // table says it boots or runs: one that stopped or is declared dead has lost its pane to
    // the others and must not draw into it (its last lines go to serial only).
    mask | 1
}

impl Console {
    fn body(&self) -> Option<Rect> {
        let p = self.pane?;
        (p.h > HEADER_HEIGHT + CHAR_H).then_some(Rect {
            x: p.x,
            y: p.y + HEADER_HEIGHT,
            w: p.w,
            h: p.h - HEADER_HEIGHT,
        })
    }

    fn columns(&self) -> usize {
        self.body()
            .map_or(0, |b| b.w.saturating_sub(2 * MARGIN) / CHAR_W)
    }

    fn rows(&self) -> usize {
        self.body()
            .map_or(0, |b| b.h.saturating_sub(MARGIN) / CHAR_H)
    }

    fn relayout_if_needed(&mut self) {
        let Some((width, height)) = self.surface.as_ref().map(|s| (s.width, s.height)) else {
            return;
        };
        let live = live_mask();
        if live == self.live && self.pane.is_some() {
            return;
        }
        self.live = live;
        let mut ids = [0usize; 64];
        let mut n = 0;
        for k in 0..64 {
            if live & (1 << k) != 0 {
                ids[n] = k;
                n += 1;
            }
        }
        let me = crate::instance::id();
        self.pane = mk_screen::pane_of(me.index(), width, height, &ids[..n]);
        if let Some(p) = self.pane {
            self.fill(p, [0, 0, 0]);
            self.draw_header(true);
            self.redraw_log();
        }
    }

    fn write_line(&mut self, bytes: &[u8]) {
        // Re-laid first: a redraw from the ring must not draw this line a second time.
        self.relayout_if_needed();
        self.ring.push(bytes);
        self.draw_log_line(bytes);
    }

    fn draw_log_line(&mut self, bytes: &[u8]) {
        let (cols, rows) = (self.columns(), self.rows());
        if cols == 0 || rows == 0 {
            return;
        }
        let mut rest = bytes;
        loop {
            let (now, later) = rest.split_at(rest.len().min(cols));
            if self.row >= rows {
                self.scroll_half(rows);
            }
            self.draw_text_row(self.row, now);
            self.row += 1;
            rest = later;
            if rest.is_empty() {
                break;
            }
        }
    }

    fn draw_input(&mut self, parts: &[&[u8]]) {
        let (cols, rows) = (self.columns(), self.rows());
        if cols == 0 || rows == 0 {
            return;
        }
        if self.row >= rows {
            self.scroll_half(rows);
        }
        let mut line = LineBuf::<RING_WIDTH>::new();
        for p in parts {
            let _ = line.write_str(core::str::from_utf8(p).unwrap_or("?"));
        }
        // The end of the line, if it is longer than the pane is wide.
        let b = line.as_bytes();
        let shown = &b[b.len().saturating_sub(cols)..];
        self.draw_text_row(self.row, shown);
    }

    /// Redraws the body from the ring: as many of the newest lines as fit.
    fn redraw_log(&mut self) {
        let (cols, rows) = (self.columns(), self.rows());
        self.row = 0;
        if cols == 0 || rows == 0 {
            return;
        }
        let available = self.ring.count.min(RING_LINES);
        let mut take = 0;
        let mut used = 0;
        while take < available {
            let len = self.ring.line(take).len();
            let need = len.div_ceil(cols).max(1);
            if used + need > rows {
                break;
            }
            used += need;
            take += 1;
        }
        for back in (0..take).rev() {
            let mut copy = [0u8; RING_WIDTH];
            let line = self.ring.line(back);
            copy[..line.len()].copy_from_slice(line);
            let len = line.len();
            self.draw_log_line(&copy[..len]);
        }
    }

    fn draw_header(&mut self, force: bool) {
        let Some(p) = self.pane else { return };
        let text = header_text();
        if !force && text.as_bytes() == self.header.as_bytes() {
            return;
        }
        self.header = text;
        let me = crate::instance::id();
        let bg = mk_screen::header_color(me.index());
        let h = HEADER_HEIGHT.min(p.h);
        self.fill(Rect { h, ..p }, bg);
        let header = self.header;
        if h >= CHAR_H + 2 {
            self.draw_text(p.x, p.y + 2, p.w, header.as_bytes(), HEADER_TEXT, bg);
        }
    }

    fn scroll_half(&mut self, rows: usize) {
        let (Some(body), Some(s)) = (self.body(), self.surface.as_mut()) else {
            return;
        };
        let keep = rows / 2;
        let drop = rows - keep;
        let top = body.y + MARGIN / 2;
        let row_px = body.w * s.bpp;
        for line in 0..keep * CHAR_H {
            let from = ((top + (drop * CHAR_H) + line) * s.stride + body.x) * s.bpp;
            let to = ((top + line) * s.stride + body.x) * s.bpp;
            if from + row_px <= s.buf.len() {
                s.buf.copy_within(from..from + row_px, to);
            }
        }
        for r in keep..rows {
            self.clear_row(r);
        }
        self.row = keep;
    }

    fn clear_row(&mut self, row: usize) {
        self.draw_text_row(row, b"");
    }

    /// Draws `text` on body row `row`, the rest of the row cleared.
    fn draw_text_row(&mut self, row: usize, text: &[u8]) {
        let Some(body) = self.body() else { return };
        let y = body.y + MARGIN / 2 + row * CHAR_H;
        self.draw_text(body.x, y, body.w, text, TEXT, [0, 0, 0]);
    }

    /// Draws one row of text `width` pixels wide at `(x, y)`: `MARGIN` pixels of background,
    /// the glyphs, background to the end. Each of the 16 pixel lines is composed in `scratch`
    /// first and copied to the framebuffer in one go: writes to video memory are far costlier
    /// than to RAM in a virtual machine (each may trap to the hypervisor), so the framebuffer
    /// sees a few long copies, never a write per pixel.
    fn draw_text(
        &mut self,
        x: usize,
        y: usize,
        width: usize,
        text: &[u8],
        fg: [u8; 3],
        bg: [u8; 3],
    ) {
        let Some(s) = self.surface.as_mut() else {
            return;
        };
        let bpp = s.bpp;
        let width = width.min(s.width.saturating_sub(x)).min(SCRATCH / 4);
        // 1 (grey), 3 or 4 bytes per pixel; other depths are not drawn.
        if !matches!(bpp, 1 | 3 | 4) || y + CHAR_H > s.height {
            return;
        }
        let fits = width.saturating_sub(MARGIN) / CHAR_W;
        let mut glyphs: [&'static [&'static [u8]]; 256] = [&[]; 256];
        let n = text.len().min(fits).min(glyphs.len());
        for (g, &c) in glyphs.iter_mut().zip(&text[..n]) {
            let ch = if c.is_ascii_graphic() || c == b' ' {
                c as char
            } else {
                '?'
            };
            *g = get_raster(ch, WEIGHT, HEIGHT)
                .or_else(|| get_raster('?', WEIGHT, HEIGHT))
                .map_or(&[], |r| r.raster());
        }
        // The 256 shades of a glyph pixel between background and foreground, encoded once.
        let mut shades = [[0u8; 4]; 256];
        for (a, shade) in shades.iter_mut().enumerate() {
            let mix = |f: u8, b: u8| {
                ((u16::from(f) * a as u16 + u16::from(b) * (255 - a as u16)) / 255) as u8
            };
            *shade = s.encode([mix(fg[0], bg[0]), mix(fg[1], bg[1]), mix(fg[2], bg[2])]);
        }
        for dy in 0..CHAR_H {
            let line = &mut self.scratch[..width * bpp];
            fill_pattern(line, &shades[0][..bpp]);
            for (i, g) in glyphs[..n].iter().enumerate() {
                let Some(row) = g.get(dy) else { continue };
                let base = (MARGIN + i * CHAR_W) * bpp;
                for (dx, &a) in row.iter().enumerate() {
                    if a != 0 {
                        let at = base + dx * bpp;
                        if at + bpp <= line.len() {
                            let px = &shades[usize::from(a)];
                            line[at] = px[0];
                            if bpp >= 3 {
                                line[at + 1] = px[1];
                                line[at + 2] = px[2];
                            }
                        }
                    }
                }
            }
            let start = ((y + dy) * s.stride + x) * bpp;
            if let Some(dst) = s.buf.get_mut(start..start + width * bpp) {
                dst.copy_from_slice(line);
            }
        }
    }

    /// Fills `r` with one colour: a line composed in `scratch`, copied row by row.
    fn fill(&mut self, r: Rect, rgb: [u8; 3]) {
        let Some(s) = self.surface.as_mut() else {
            return;
        };
        let bpp = s.bpp;
        if !matches!(bpp, 1 | 3 | 4) {
            return;
        }
        let w = r.w.min(s.width.saturating_sub(r.x)).min(SCRATCH / 4);
        let px = s.encode(rgb);
        let line = &mut self.scratch[..w * bpp];
        fill_pattern(line, &px[..bpp]);
        for y in r.y..(r.y + r.h).min(s.height) {
            let start = (y * s.stride + r.x) * bpp;
            if let Some(dst) = s.buf.get_mut(start..start + w * bpp) {
                dst.copy_from_slice(line);
            }
        }
    }
}

/// Fills `line` with copies of `pixel`: one pixel written, then doubled by block copies (a
/// call per pixel is slow where every instruction counts, as under nested KVM).
fn fill_pattern(line: &mut [u8], pixel: &[u8]) {
    if pixel.iter().all(|&b| b == pixel[0]) {
        line.fill(pixel[0]);
        return;
    }
    let n = pixel.len().min(line.len());
    line[..n].copy_from_slice(&pixel[..n]);
    let mut done = n;
    while done < line.len() {
        let take = done.min(line.len() - done);
        line.copy_within(..take, done);
        done += take;
    }
}

impl Surface {
    fn encode(&self, [r, g, b]: [u8; 3]) -> [u8; 4] {
        match self.format {
            1 => [b, g, r, 0],
            2 => [
                ((u16::from(r) + u16::from(g) + u16::from(b)) / 3) as u8,
                0,
                0,
                0,
            ],
            _ => [r, g, b, 0],
        }
    }
}

impl Ring {
    fn push(&mut self, bytes: &[u8]) {
        let slot = self.count % RING_LINES;
        let len = bytes.len().min(RING_WIDTH);
        self.lines[slot][..len].copy_from_slice(&bytes[..len]);
        self.lens[slot] = len as u8;
        self.count += 1;
    }

    /// The line `back` lines before the newest (0: the newest).
    fn line(&self, back: usize) -> &[u8] {
        let slot = (self.count - 1 - back) % RING_LINES;
        &self.lines[slot][..usize::from(self.lens[slot])]
    }
}

/// `instance 1 | CPUs 1,2 | 336 MiB | running`: what changes only when the instance's
/// resources or state do (a clock here would redraw every header every second).
fn header_text() -> LineBuf<160> {
    let me = crate::instance::id();
    let mut t = LineBuf::new();
    let _ = write!(t, "instance {me}");
    let Some(inst) = super::shared::shared().and_then(|r| r.instance(me).ok()) else {
        let _ = write!(t, " | starting");
        return t;
    };
    if let Ok(res) = inst.resources() {
        let _ = write!(t, " | CPUs ");
        for (i, c) in res.cpus().iter().enumerate() {
            let _ = write!(t, "{}{c}", if i > 0 { "," } else { "" });
        }
        let _ = write!(t, " | {} MiB", res.total_bytes >> 20);
    }
    let state = inst
        .state()
        .map_or("corrupt", mk_shared::InstanceState::name);
    let _ = write!(t, " | {state}");
    t
}

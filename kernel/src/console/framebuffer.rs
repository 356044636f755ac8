//! A text console on the bootloader's linear framebuffer, for machines without a serial port.
//!
//! Glyphs come from `noto-sans-mono-bitmap` (the font the bootloader itself uses). When the
//! cursor reaches the bottom, the upper half of the screen is dropped in one copy: scrolling a
//! line at a time would move the whole framebuffer for every line, which is slow in emulation.

use bootloader_api::info::{FrameBuffer, FrameBufferInfo, PixelFormat};
use noto_sans_mono_bitmap::{FontWeight, RasterHeight, get_raster, get_raster_width};
use spin::Mutex;

const HEIGHT: RasterHeight = RasterHeight::Size16;
const WEIGHT: FontWeight = FontWeight::Regular;
const CHAR_W: usize = get_raster_width(WEIGHT, HEIGHT);
const CHAR_H: usize = HEIGHT.val();
const MARGIN: usize = 4;

struct Screen {
    buf: &'static mut [u8],
    info: FrameBufferInfo,
    x: usize,
    y: usize,
}

static SCREEN: Mutex<Option<Screen>> = Mutex::new(None);

pub fn init(fb: &'static mut FrameBuffer) {
    let info = fb.info();
    let buf = fb.buffer_mut();
    buf.fill(0);
    *SCREEN.lock() = Some(Screen {
        buf,
        info,
        x: MARGIN,
        y: MARGIN,
    });
}

pub fn write_bytes(bytes: &[u8]) {
    if let Some(screen) = SCREEN.lock().as_mut() {
        screen.write(bytes);
    }
}

/// Draws `parts` on the current row, over whatever was there, and leaves the cursor at the
/// row's start: the next write (the same row redrawn, or a log line) replaces it.
pub fn input_line(parts: &[&[u8]]) {
    if let Some(screen) = SCREEN.lock().as_mut() {
        screen.clear_row();
        for part in parts {
            for &b in *part {
                if screen.x + CHAR_W + MARGIN > screen.info.width {
                    break;
                }
                screen.put(b as char);
            }
        }
        screen.x = MARGIN;
    }
}

pub fn force_write_bytes(bytes: &[u8]) {
    if let Some(mut guard) = SCREEN.try_lock()
        && let Some(screen) = guard.as_mut()
    {
        screen.write(bytes);
    }
}

impl Screen {
    fn write(&mut self, bytes: &[u8]) {
        // Bytes are ASCII/UTF-8 log text; anything not in the font is drawn as '?'.
        for &b in bytes {
            match b {
                b'\n' => self.newline(),
                b'\r' => self.x = MARGIN,
                _ => self.put(b as char),
            }
        }
    }

    fn clear_row(&mut self) {
        let bpp = self.info.bytes_per_pixel;
        for y in self.y..(self.y + CHAR_H).min(self.info.height) {
            let row = y * self.info.stride * bpp;
            if let Some(px) = self.buf.get_mut(row..row + self.info.width * bpp) {
                px.fill(0);
            }
        }
        self.x = MARGIN;
    }

    fn newline(&mut self) {
        self.x = MARGIN;
        self.y += CHAR_H;
        if self.y + CHAR_H + MARGIN > self.info.height {
            self.scroll_half();
        }
    }

    fn scroll_half(&mut self) {
        let row_bytes = self.info.stride * self.info.bytes_per_pixel;
        let keep_rows = self.info.height / 2;
        let drop_rows = self.info.height - keep_rows;
        let total = self.info.height * row_bytes;
        self.buf.copy_within(drop_rows * row_bytes..total, 0);
        self.buf[keep_rows * row_bytes..total].fill(0);
        self.y = self.y.saturating_sub(drop_rows);
    }

    fn put(&mut self, c: char) {
        if self.x + CHAR_W + MARGIN > self.info.width {
            self.newline();
        }
        let glyph = get_raster(c, WEIGHT, HEIGHT)
            .or_else(|| get_raster('?', WEIGHT, HEIGHT))
            .expect("the font has '?'");
        for (dy, row) in glyph.raster().iter().enumerate() {
            for (dx, &intensity) in row.iter().enumerate() {
                self.pixel(self.x + dx, self.y + dy, intensity);
            }
        }
        self.x += CHAR_W;
    }

    fn pixel(&mut self, x: usize, y: usize, intensity: u8) {
        let bpp = self.info.bytes_per_pixel;
        let offset = (y * self.info.stride + x) * bpp;
        let color = match self.info.pixel_format {
            PixelFormat::Rgb => [intensity, intensity, intensity / 2, 0],
            PixelFormat::Bgr => [intensity / 2, intensity, intensity, 0],
            PixelFormat::U8 => [intensity, 0, 0, 0],
            _ => [intensity, intensity, intensity, 0],
        };
        let n = bpp.min(color.len());
        if let Some(dst) = self.buf.get_mut(offset..offset + n) {
            dst.copy_from_slice(&color[..n]);
        }
    }
}

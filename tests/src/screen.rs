//! Reading a screenshot (QEMU `screendump`, PPM) for the panes: which instances have one, in
//! the layout every instance computes (`mk_screen::layout`), each with its header colour, some
//! header text, and some log text in its body.

use mk_screen::{HEADER_HEIGHT, MAX_PANES, Rect, header_color, layout};

/// A decoded P6 image: RGB bytes, row after row.
pub struct Image {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Image {
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    fn count(&self, r: Rect, pred: impl Fn([u8; 3]) -> bool) -> usize {
        let mut n = 0;
        for y in r.y..(r.y + r.h).min(self.height) {
            for x in r.x..(r.x + r.w).min(self.width) {
                n += usize::from(pred(self.pixel(x, y)));
            }
        }
        n
    }
}

/// Decodes a binary PPM (P6, maxval 255).
pub fn parse_ppm(bytes: &[u8]) -> Result<Image, String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'#') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("PPM header cut short".into());
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
    }
    i += 1; // the single whitespace byte before the pixels
    if fields[0] != "P6" || fields[3] != "255" {
        return Err(format!("not an 8-bit P6 PPM ({} {})", fields[0], fields[3]));
    }
    let num = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("bad PPM size '{s}'"))
    };
    let (width, height) = (num(&fields[1])?, num(&fields[2])?);
    let rgb = bytes
        .get(i..i + width * height * 3)
        .ok_or("PPM pixels cut short")?
        .to_vec();
    Ok(Image { width, height, rgb })
}

/// Checks that exactly the `expected` instances have panes, laid out as the kernel lays them;
/// returns a one-line description of what was found.
pub fn check_panes(img: &Image, expected: &[usize]) -> Result<String, String> {
    let mut panes = [(0, Rect::default()); MAX_PANES];
    let n = layout(img.width, img.height, expected, &mut panes);
    for &(id, r) in &panes[..n] {
        let color = header_color(id);
        let at = img.pixel(r.x + 1, r.y + 1);
        if at != color {
            return Err(format!(
                "instance {id}'s pane at {r:?}: header colour {at:02x?}, expected {color:02x?}"
            ));
        }
        let header = Rect {
            h: HEADER_HEIGHT,
            ..r
        };
        let text = img.count(header, |p| p != color);
        if text < 50 {
            return Err(format!(
                "instance {id}'s header has no text ({text} pixels)"
            ));
        }
        let body = Rect {
            y: r.y + HEADER_HEIGHT,
            h: r.h - HEADER_HEIGHT,
            ..r
        };
        let log = img.count(body, |p| p != [0, 0, 0]);
        if log < 200 {
            return Err(format!(
                "instance {id}'s pane shows no log ({log} lit pixels)"
            ));
        }
    }
    // No pane of an instance that should have none: its header colour nowhere as a wide band.
    for other in (0..mk_screen::HEADER_COLORS.len()).filter(|k| !expected.contains(k)) {
        let color = header_color(other);
        for y in 0..img.height {
            let run = (0..img.width)
                .map(|x| img.pixel(x, y) == color)
                .fold((0, 0), |(best, cur), hit| {
                    let cur = if hit { cur + 1 } else { 0 };
                    (best.max(cur), cur)
                })
                .0;
            if run > 64 {
                return Err(format!(
                    "a header of instance {other} (not expected) at row {y}"
                ));
            }
        }
    }
    Ok(format!(
        "{}x{}, panes of instances {expected:?}",
        img.width, img.height
    ))
}

/// `check_panes` on PPM bytes.
pub fn check_ppm(bytes: &[u8], expected: &[usize]) -> Result<String, String> {
    check_panes(&parse_ppm(bytes)?, expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draws what the kernel would: each pane's header in its colour with some "text", a body
    /// with some lit pixels.
    fn screen(w: usize, h: usize, live: &[usize]) -> Image {
        let mut img = Image {
            width: w,
            height: h,
            rgb: vec![0; w * h * 3],
        };
        let mut panes = [(0, Rect::default()); MAX_PANES];
        let n = layout(w, h, live, &mut panes);
        for &(id, r) in &panes[..n] {
            for y in r.y..r.y + r.h {
                for x in r.x..r.x + r.w {
                    let c = if y < r.y + HEADER_HEIGHT {
                        if (8..40).contains(&(x - r.x)) && y > r.y + 4 {
                            [255, 255, 255]
                        } else {
                            header_color(id)
                        }
                    } else if (8..60).contains(&(x - r.x)) && (y - r.y) % 16 < 8 {
                        [200, 200, 180]
                    } else {
                        [0, 0, 0]
                    };
                    let i = (y * w + x) * 3;
                    img.rgb[i..i + 3].copy_from_slice(&c);
                }
            }
        }
        img
    }

    fn ppm(img: &Image) -> Vec<u8> {
        let mut v = format!("P6\n# qemu\n{} {}\n255\n", img.width, img.height).into_bytes();
        v.extend_from_slice(&img.rgb);
        v
    }

    #[test]
    fn finds_the_expected_panes() {
        let img = screen(640, 480, &[0, 1, 2, 3]);
        let parsed = parse_ppm(&ppm(&img)).unwrap();
        assert_eq!((parsed.width, parsed.height), (640, 480));
        assert!(check_panes(&parsed, &[0, 1, 2, 3]).is_ok());
    }

    #[test]
    fn a_missing_or_extra_pane_fails() {
        let img = screen(640, 480, &[0, 1, 2, 3]);
        // Three expected, four drawn: the layout differs and instance 3's header is extra.
        assert!(check_panes(&img, &[0, 1, 2]).is_err());
        let img = screen(640, 480, &[0, 1]);
        assert!(check_panes(&img, &[0, 1, 3]).is_err());
        // An empty (black) pane body fails.
        let mut img = screen(640, 480, &[0, 1]);
        for y in 260..480 {
            for x in 0..640 {
                let i = (y * 640 + x) * 3;
                img.rgb[i..i + 3].copy_from_slice(&[0, 0, 0]);
            }
        }
        assert!(check_panes(&img, &[0, 1]).unwrap_err().contains("no log"));
    }

    #[test]
    fn bad_ppm_is_an_error() {
        assert!(parse_ppm(b"P5\n1 1\n255\n\0").is_err());
        assert!(parse_ppm(b"P6\n2 2\n255\n\0\0\0").is_err());
        assert!(parse_ppm(b"P6").is_err());
    }
}

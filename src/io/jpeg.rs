//! JPEG decoding bit-compatible with libjpeg-turbo as Pillow drives it.
//!
//! Huffman-coded JPEG (baseline, extended sequential and progressive, 8-bit) decoded exactly as
//! libjpeg-turbo does with its defaults, which is what Pillow uses: the accurate integer IDCT
//! (`jidctint.c`), "fancy" (triangle) chroma upsampling (`jdsample.c`), the fixed-point
//! YCbCr->RGB tables (`jdcolor.c`), libjpeg's colour-space guesses (`jdapimin.c`), then PIL's
//! `convert("RGB")` (CMYK via Adobe-inverted values and `cmyk2rgb`).
//!
//! The `image` crate's decoder (zune-jpeg) rounds differently and differs by up to 3 levels in
//! some pixels, which survives the resize; this one matches Pillow bit for bit. What it does not
//! handle (arithmetic coding, lossless or 12-bit JPEG, unusual sampling ratios, progressive
//! files whose AC bands are incomplete, which libjpeg smooths) is reported as
//! `JpegError::Unsupported` and the caller falls back to the `image` crate.

use image::RgbImage;

#[derive(Debug)]
pub(super) enum JpegError {
    /// Valid JPEG outside what this decoder reproduces: decode it some other way.
    Unsupported(String),
    /// Broken or truncated data (Pillow refuses these too).
    Corrupt(String),
}
use JpegError::{Corrupt, Unsupported};
type R<T> = std::result::Result<T, JpegError>;

/// `jpeg_natural_order`, with libjpeg's 16 extra entries guarding corrupt run lengths.
const NATURAL: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

struct Huffman {
    /// 9-bit lookahead: `len << 8 | value`, 0 when the code is longer.
    fast: Vec<u16>,
    maxcode: [i32; 18],
    valoffset: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> R<Huffman> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total != values.len() || total > 256 {
            return Err(Corrupt("bad Huffman table".into()));
        }
        let mut fast = vec![0u16; 512];
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code = 0i32;
        let mut k = 0usize;
        for l in 1..=16 {
            let n = counts[l - 1] as usize;
            // libjpeg's check (`jpeg_make_d_derived_tbl`), made before the codes are entered in
            // the lookahead table, which they would overrun.
            if code + n as i32 > 1 << l {
                return Err(Corrupt(format!(
                    "bad Huffman table: more codes of length {l} than fit in {l} bits"
                )));
            }
            valoffset[l] = k as i32 - code;
            for _ in 0..n {
                if l <= 9 {
                    let shift = 9 - l;
                    let first = (code as usize) << shift;
                    for e in &mut fast[first..first + (1 << shift)] {
                        *e = (l as u16) << 8 | values[k] as u16;
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[l] = code - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        Ok(Huffman {
            fast,
            maxcode,
            valoffset,
            values,
        })
    }
}

/// Entropy-coded data reader: removes stuffed zero bytes, feeds zero bits after a marker
/// (as libjpeg does) and notes running out of data.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    n: u32,
    marker_hit: bool,
    eof: bool,
    real_bits: u64,
    used_bits: u64,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        Bits {
            data,
            pos,
            acc: 0,
            n: 0,
            marker_hit: false,
            eof: false,
            real_bits: 0,
            used_bits: 0,
        }
    }

    fn fill(&mut self) {
        while self.n <= 56 {
            let mut byte = 0u8;
            let mut real = false;
            if !self.marker_hit && !self.eof {
                match self.data.get(self.pos) {
                    None => self.eof = true,
                    Some(&0xFF) => {
                        let mut p = self.pos + 1;
                        while p < self.data.len() && self.data[p] == 0xFF {
                            p += 1;
                        }
                        match self.data.get(p) {
                            None => self.eof = true,
                            Some(0) => {
                                byte = 0xFF;
                                real = true;
                                self.pos = p + 1;
                            }
                            Some(_) => self.marker_hit = true,
                        }
                    }
                    Some(&b) => {
                        byte = b;
                        real = true;
                        self.pos += 1;
                    }
                }
            }
            if real {
                self.real_bits += 8;
            }
            self.acc |= (byte as u64) << (56 - self.n);
            self.n += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.n < n {
            self.fill();
        }
        let v = (self.acc >> (64 - n)) as u32;
        self.acc <<= n;
        self.n -= n;
        self.used_bits += n as u64;
        v
    }

    #[inline]
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let s = s.min(16);
        let v = self.bits(s) as i32;
        if v < 1 << (s - 1) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    #[inline]
    fn huff(&mut self, t: &Huffman) -> u8 {
        if self.n < 16 {
            self.fill();
        }
        let e = t.fast[(self.acc >> 55) as usize];
        if e != 0 {
            let len = (e >> 8) as u32;
            self.acc <<= len;
            self.n -= len;
            self.used_bits += len as u64;
            return e as u8;
        }
        let mut code = 0i32;
        for l in 1..=16 {
            code = code << 1 | self.bits(1) as i32;
            if code <= t.maxcode[l] {
                // In range for any table `Huffman::new` accepts; a miss reads as a bad code.
                let i = usize::try_from(t.valoffset[l] + code).unwrap_or(usize::MAX);
                return t.values.get(i).copied().unwrap_or(0);
            }
        }
        0 // libjpeg: "Corrupt JPEG data: bad Huffman code", use 0
    }

    /// Ran past the end of the file (not into a marker): the file is truncated.
    fn truncated(&self) -> bool {
        self.eof && self.used_bits > self.real_bits
    }

    /// libjpeg's `process_restart`: drop the buffered bits, find and skip the RSTn marker.
    /// Returns whether it found one; if another marker (or the end of the data) comes first, it
    /// is left where it is, as libjpeg's `jpeg_resync_to_restart` leaves it.
    fn restart(&mut self) -> bool {
        self.acc = 0;
        self.n = 0;
        self.used_bits = self.real_bits;
        self.marker_hit = false;
        let d = self.data;
        let mut p = self.pos;
        while p + 1 < d.len() {
            if d[p] == 0xFF && (0xD0..=0xD7).contains(&d[p + 1]) {
                self.pos = p + 2;
                return true;
            }
            if d[p] == 0xFF && d[p + 1] != 0 && d[p + 1] != 0xFF {
                break; // some other marker: leave it (libjpeg resyncs the same way)
            }
            p += 1;
        }
        self.pos = p;
        false
    }
}

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per row / column, padded to whole MCUs.
    bw: usize,
    bh: usize,
    /// Size of the downsampled component (libjpeg's `downsampled_width/height`).
    dw: usize,
    dh: usize,
    coefs: Vec<i16>,
    qt: Option<[u16; 64]>,
    dc_pred: i32,
    coef_bits: [i32; 64],
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    hmax: usize,
    vmax: usize,
    mcux: usize,
    mcuy: usize,
    comps: Vec<Component>,
}

fn be16(d: &[u8], p: usize) -> R<usize> {
    match d.get(p..p + 2) {
        Some(b) => Ok((b[0] as usize) << 8 | b[1] as usize),
        None => Err(Corrupt("truncated marker segment".into())),
    }
}

pub(super) fn decode(data: &[u8]) -> R<RgbImage> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(Corrupt("missing SOI marker".into()));
    }
    let mut pos = 2;
    let mut qts: [Option<[u16; 64]>; 4] = [None; 4];
    let mut dc_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut ac_tables: [Option<Huffman>; 4] = [None, None, None, None];
    let mut restart_interval = 0usize;
    let mut frame: Option<Frame> = None;
    let mut saw_jfif = false;
    let mut adobe: Option<u8> = None;
    let mut scans = 0usize;

    loop {
        // next_marker: skip garbage, then fill bytes.
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        let Some(&marker) = data.get(pos) else {
            if scans > 0 {
                break; // missing EOI after complete scans
            }
            return Err(Corrupt("no image data (file truncated?)".into()));
        };
        pos += 1;
        match marker {
            0xD9 => break,
            0xD8 | 0x01 | 0xD0..=0xD7 | 0x00 => {}
            _ => {
                let len = be16(data, pos)?;
                if len < 2 || pos + len > data.len() {
                    return Err(Corrupt(format!(
                        "truncated segment (marker 0x{marker:02X})"
                    )));
                }
                let seg = &data[pos + 2..pos + len];
                pos += len;
                match marker {
                    0xC0..=0xC2 => {
                        if frame.is_some() {
                            return Err(Unsupported("more than one frame".into()));
                        }
                        frame = Some(parse_sof(seg, marker == 0xC2)?);
                    }
                    0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                        return Err(Unsupported(format!(
                            "JPEG process SOF{} (only Huffman baseline/sequential/progressive)",
                            marker - 0xC0
                        )));
                    }
                    0xC4 => parse_dht(seg, &mut dc_tables, &mut ac_tables)?,
                    0xDB => parse_dqt(seg, &mut qts)?,
                    0xDD => restart_interval = be16(seg, 0)?,
                    0xDC => return Err(Unsupported("DNL marker".into())),
                    0xE0 if seg.len() >= 14 && seg.starts_with(b"JFIF\0") => saw_jfif = true,
                    0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => adobe = Some(seg[11]),
                    0xDA => {
                        let f = frame
                            .as_mut()
                            .ok_or_else(|| Corrupt("scan before frame header".into()))?;
                        pos = decode_scan(
                            data,
                            pos,
                            seg,
                            f,
                            &qts,
                            &dc_tables,
                            &ac_tables,
                            restart_interval,
                        )?;
                        scans += 1;
                    }
                    _ => {}
                }
            }
        }
    }
    let frame = frame.ok_or_else(|| Corrupt("no frame header".into()))?;
    if scans == 0 {
        return Err(Corrupt("no scans".into()));
    }
    finish(frame, saw_jfif, adobe)
}

fn parse_sof(seg: &[u8], progressive: bool) -> R<Frame> {
    if seg.len() < 6 {
        return Err(Corrupt("short SOF".into()));
    }
    if seg[0] != 8 {
        return Err(Unsupported(format!("{}-bit samples", seg[0])));
    }
    let height = be16(seg, 1)?;
    let width = be16(seg, 3)?;
    let nc = seg[5] as usize;
    if width == 0 || height == 0 {
        return Err(Unsupported("zero or DNL-defined size".into()));
    }
    // The caller checked the size the `image` crate reads from the header; this is the size the
    // allocations below follow, so it is checked too.
    super::image::check_dimensions(width as u32, height as u32).map_err(Corrupt)?;
    if !matches!(nc, 1 | 3 | 4) || seg.len() < 6 + 3 * nc {
        return Err(Unsupported(format!("{nc} components")));
    }
    let mut comps = Vec::with_capacity(nc);
    for i in 0..nc {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err(Corrupt("bad sampling factors or table".into()));
        }
        comps.push(Component {
            id: c[0],
            h,
            v,
            tq: c[2] as usize,
            bw: 0,
            bh: 0,
            dw: 0,
            dh: 0,
            coefs: Vec::new(),
            qt: None,
            dc_pred: 0,
            coef_bits: [-1; 64],
        });
    }
    let hmax = comps.iter().map(|c| c.h).max().unwrap();
    let vmax = comps.iter().map(|c| c.v).max().unwrap();
    let mcux = width.div_ceil(8 * hmax);
    let mcuy = height.div_ceil(8 * vmax);
    for c in &mut comps {
        c.bw = mcux * c.h;
        c.bh = mcuy * c.v;
        c.dw = (width * c.h).div_ceil(hmax);
        c.dh = (height * c.v).div_ceil(vmax);
        c.coefs = vec![0i16; c.bw * c.bh * 64];
    }
    Ok(Frame {
        width,
        height,
        progressive,
        hmax,
        vmax,
        mcux,
        mcuy,
        comps,
    })
}

fn parse_dht(
    mut seg: &[u8],
    dc: &mut [Option<Huffman>; 4],
    ac: &mut [Option<Huffman>; 4],
) -> R<()> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return Err(Corrupt("short DHT".into()));
        }
        let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let counts: [u8; 16] = seg[1..17].try_into().unwrap();
        let n: usize = counts.iter().map(|&c| c as usize).sum();
        if class > 1 || id > 3 || seg.len() < 17 + n {
            return Err(Corrupt("bad DHT".into()));
        }
        let t = Huffman::new(&counts, seg[17..17 + n].to_vec())?;
        if class == 0 {
            dc[id] = Some(t)
        } else {
            ac[id] = Some(t)
        }
        seg = &seg[17 + n..];
    }
    Ok(())
}

fn parse_dqt(mut seg: &[u8], qts: &mut [Option<[u16; 64]>; 4]) -> R<()> {
    while !seg.is_empty() {
        let (pq, tq) = (seg[0] >> 4, (seg[0] & 15) as usize);
        let size = if pq == 0 { 64 } else { 128 };
        if tq > 3 || pq > 1 || seg.len() < 1 + size {
            return Err(Corrupt("bad DQT".into()));
        }
        let mut q = [0u16; 64];
        for k in 0..64 {
            q[NATURAL[k]] = if pq == 0 {
                seg[1 + k] as u16
            } else {
                (seg[1 + 2 * k] as u16) << 8 | seg[2 + 2 * k] as u16
            };
        }
        qts[tq] = Some(q);
        seg = &seg[1 + size..];
    }
    Ok(())
}

/// Huffman table `i` of `tables` (the DC or AC ones, named by `class`), which a scan uses.
fn table<'t>(tables: &'t [Option<Huffman>; 4], i: usize, class: &str) -> R<&'t Huffman> {
    tables
        .get(i)
        .and_then(Option::as_ref)
        .ok_or_else(|| Corrupt(format!("{class} Huffman table {i} missing")))
}

/// Decodes one scan. Long because its MCU loop (restart intervals, baseline and progressive
/// passes, block placement) is one hot loop whose parts share its counters.
#[allow(clippy::too_many_arguments)]
fn decode_scan(
    data: &[u8],
    pos: usize,
    seg: &[u8],
    f: &mut Frame,
    qts: &[Option<[u16; 64]>; 4],
    dc_tables: &[Option<Huffman>; 4],
    ac_tables: &[Option<Huffman>; 4],
    restart_interval: usize,
) -> R<usize> {
    let ns = *seg.first().ok_or_else(|| Corrupt("short SOS".into()))? as usize;
    if ns == 0 || ns > 4 || seg.len() < 4 + 2 * ns {
        return Err(Corrupt("bad SOS".into()));
    }
    let mut sc = Vec::with_capacity(ns); // (component index, dc table, ac table)
    for i in 0..ns {
        let id = seg[1 + 2 * i];
        let t = seg[2 + 2 * i];
        let ci = f
            .comps
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(|| Corrupt(format!("scan names unknown component {id}")))?;
        sc.push((ci, (t >> 4) as usize & 3, (t & 15) as usize & 3));
    }
    let ss = seg[1 + 2 * ns] as usize;
    let se = seg[2 + 2 * ns] as usize;
    let ah = (seg[3 + 2 * ns] >> 4) as u32;
    let al = (seg[3 + 2 * ns] & 15) as u32;
    // (Sequential scans with other Ss/Se/Ah/Al only draw a warning from libjpeg.)
    if f.progressive
        && (se > 63 || ss > se || (ss == 0 && se != 0) || (ss > 0 && ns != 1) || al > 13)
    {
        return Err(Corrupt("bad progressive scan parameters".into()));
    }
    // Latch quantisation tables at the first scan of each component, like libjpeg.
    for &(ci, _, _) in &sc {
        let c = &mut f.comps[ci];
        if c.qt.is_none() {
            c.qt = Some(
                qts[c.tq].ok_or_else(|| Corrupt(format!("quantisation table {} missing", c.tq)))?,
            );
        }
        c.dc_pred = 0;
    }
    let need_dc = !f.progressive || (ss == 0 && ah == 0);
    let need_ac = !f.progressive || ss > 0;
    for &(_, td, ta) in &sc {
        if need_dc {
            table(dc_tables, td, "DC")?;
        }
        if need_ac {
            table(ac_tables, ta, "AC")?;
        }
    }
    // coef_bits bookkeeping (used to detect incomplete progressive files).
    if f.progressive {
        for &(ci, _, _) in &sc {
            for k in ss..=se {
                f.comps[ci].coef_bits[k] = al as i32;
            }
        }
    } else {
        for &(ci, _, _) in &sc {
            f.comps[ci].coef_bits = [0; 64];
        }
    }

    let mut bits = Bits::new(data, pos);
    let mut eobrun = 0u32;
    let mut insufficient = false;

    // The units of the scan: MCUs for interleaved scans, single blocks otherwise.
    let (units_x, units_y) = if ns > 1 {
        (f.mcux, f.mcuy)
    } else {
        let c = &f.comps[sc[0].0];
        (c.dw.div_ceil(8), c.dh.div_ceil(8))
    };
    let total = units_x * units_y;
    let mut restarts_to_go = restart_interval;
    for unit in 0..total {
        if restart_interval > 0 {
            if restarts_to_go == 0 {
                // libjpeg clears its out-of-data flag only when it finds the restart marker.
                // Without one, every later restart fails the same way: if the data has run
                // out, the rest of the scan stays empty and need not be visited.
                if bits.restart() {
                    insufficient = false;
                } else if insufficient {
                    break;
                }
                for &(ci, _, _) in &sc {
                    f.comps[ci].dc_pred = 0;
                }
                eobrun = 0;
                restarts_to_go = restart_interval;
            }
            restarts_to_go -= 1;
        }
        if insufficient {
            if restart_interval > 0 {
                continue; // empty until the next restart marker
            }
            break; // empty to the end of the scan
        }
        let (ux, uy) = (unit % units_x, unit / units_x);
        for &(ci, td, ta) in &sc {
            let (h, v) = if ns > 1 {
                (f.comps[ci].h, f.comps[ci].v)
            } else {
                (1, 1)
            };
            for by in 0..v {
                for bx in 0..h {
                    let c = &mut f.comps[ci];
                    let (row, col) = if ns > 1 {
                        (uy * v + by, ux * h + bx)
                    } else {
                        (uy, ux)
                    };
                    let off = (row * c.bw + col) * 64;
                    let block = &mut c.coefs[off..off + 64];
                    if !f.progressive {
                        let dc = table(dc_tables, td, "DC")?;
                        let ac = table(ac_tables, ta, "AC")?;
                        let s = bits.huff(dc) as u32;
                        let diff = bits.receive_extend(s);
                        c.dc_pred = c.dc_pred.wrapping_add(diff);
                        block[0] = c.dc_pred as i16;
                        let mut k = 1;
                        while k < 64 {
                            let rs = bits.huff(ac);
                            let (r, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                            if s != 0 {
                                k += r;
                                block[NATURAL[k]] = bits.receive_extend(s) as i16;
                            } else if r == 15 {
                                k += 15;
                            } else {
                                break;
                            }
                            k += 1;
                        }
                    } else if ss == 0 {
                        if ah == 0 {
                            let s = bits.huff(table(dc_tables, td, "DC")?) as u32;
                            let diff = bits.receive_extend(s);
                            c.dc_pred = c.dc_pred.wrapping_add(diff);
                            block[0] = (c.dc_pred << al) as i16;
                        } else if bits.bits(1) != 0 {
                            block[0] |= (1i32 << al) as i16;
                        }
                    } else if ah == 0 {
                        ac_first(
                            &mut bits,
                            table(ac_tables, ta, "AC")?,
                            block,
                            ss,
                            se,
                            al,
                            &mut eobrun,
                        );
                    } else {
                        ac_refine(
                            &mut bits,
                            table(ac_tables, ta, "AC")?,
                            block,
                            ss,
                            se,
                            al,
                            &mut eobrun,
                        );
                    }
                }
            }
        }
        if bits.truncated() {
            return Err(Corrupt("image file is truncated".into()));
        }
        if bits.marker_hit && bits.used_bits > bits.real_bits {
            // libjpeg ran into a marker and fed zeros: the rest of this restart interval
            // stays empty.
            insufficient = true;
        }
    }
    // Position after the entropy-coded data: the next marker.
    let mut p = bits.pos;
    while p + 1 < data.len()
        && !(data[p] == 0xFF && data[p + 1] != 0 && !(0xD0..=0xD7).contains(&data[p + 1]))
    {
        p += 1;
    }
    Ok(p)
}

fn ac_first(
    bits: &mut Bits,
    t: &Huffman,
    block: &mut [i16],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) {
    if *eobrun > 0 {
        *eobrun -= 1;
        return;
    }
    let mut k = ss;
    while k <= se {
        let rs = bits.huff(t);
        let (r, s) = ((rs >> 4) as u32, (rs & 15) as u32);
        if s != 0 {
            k += r as usize;
            block[NATURAL[k]] = (bits.receive_extend(s) << al) as i16;
        } else if r == 15 {
            k += 15;
        } else {
            *eobrun = 1 << r;
            if r > 0 {
                *eobrun += bits.bits(r);
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
}

fn ac_refine(
    bits: &mut Bits,
    t: &Huffman,
    block: &mut [i16],
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
) {
    let p1 = 1i32 << al;
    let m1 = -1i32 << al;
    let refine = |bits: &mut Bits, coef: &mut i16| {
        if bits.bits(1) != 0 && (*coef as i32 & p1) == 0 {
            *coef = if *coef >= 0 {
                (*coef as i32 + p1) as i16
            } else {
                (*coef as i32 + m1) as i16
            };
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = bits.huff(t);
            let mut r = (rs >> 4) as i32;
            let mut s = (rs & 15) as i32;
            if s != 0 {
                s = if bits.bits(1) != 0 { p1 } else { m1 };
            } else if r != 15 {
                *eobrun = 1 << r;
                if r > 0 {
                    *eobrun += bits.bits(r as u32);
                }
                break;
            }
            loop {
                let coef = &mut block[NATURAL[k]];
                if *coef != 0 {
                    refine(bits, coef);
                } else {
                    r -= 1;
                    if r < 0 {
                        break;
                    }
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if s != 0 {
                block[NATURAL[k]] = s as i16;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let coef = &mut block[NATURAL[k]];
            if *coef != 0 {
                refine(bits, coef);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
}

/// `jpeg_idct_islow` of one dequantised block into 8x8 samples.
fn idct_islow(coef: &[i16], q: &[u16; 64], out: &mut [u8], stride: usize) {
    const CONST_BITS: i64 = 13;
    const PASS1_BITS: i64 = 2;
    const F0_298: i64 = 2446;
    const F0_390: i64 = 3196;
    const F0_541: i64 = 4433;
    const F0_765: i64 = 6270;
    const F0_899: i64 = 7373;
    const F1_175: i64 = 9633;
    const F1_501: i64 = 12299;
    const F1_847: i64 = 15137;
    const F1_961: i64 = 16069;
    const F2_053: i64 = 16819;
    const F2_562: i64 = 20995;
    const F3_072: i64 = 25172;
    #[inline]
    fn descale(x: i64, n: i64) -> i64 {
        (x + (1 << (n - 1))) >> n
    }
    #[inline]
    fn range_limit(x: i64) -> u8 {
        // IDCT_range_limit[x & RANGE_MASK]: x as a 10-bit two's complement value, + 128, clamped.
        let i = (x & 0x3FF) as i32;
        let s = if i >= 512 { i - 1024 } else { i };
        (s + 128).clamp(0, 255) as u8
    }
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let dq = |r: usize| coef[r * 8 + col] as i64 * q[r * 8 + col] as i64;
        if (1..8).all(|r| coef[r * 8 + col] == 0) {
            let dc = (dq(0) << PASS1_BITS) as i32;
            for r in 0..8 {
                ws[r * 8 + col] = dc;
            }
            continue;
        }
        let (z2, z3) = (dq(2), dq(6));
        let z1 = (z2 + z3) * F0_541;
        let tmp2 = z1 + z3 * -F1_847;
        let tmp3 = z1 + z2 * F0_765;
        let (z2, z3) = (dq(0), dq(4));
        let tmp0 = (z2 + z3) << CONST_BITS;
        let tmp1 = (z2 - z3) << CONST_BITS;
        let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let (t0, t1, t2, t3) = (dq(7), dq(5), dq(3), dq(1));
        let (o0, o1, o2, o3) = odd_part(t0, t1, t2, t3);
        let d = CONST_BITS - PASS1_BITS;
        ws[col] = descale(tmp10 + o3, d) as i32;
        ws[7 * 8 + col] = descale(tmp10 - o3, d) as i32;
        ws[8 + col] = descale(tmp11 + o2, d) as i32;
        ws[6 * 8 + col] = descale(tmp11 - o2, d) as i32;
        ws[2 * 8 + col] = descale(tmp12 + o1, d) as i32;
        ws[5 * 8 + col] = descale(tmp12 - o1, d) as i32;
        ws[3 * 8 + col] = descale(tmp13 + o0, d) as i32;
        ws[4 * 8 + col] = descale(tmp13 - o0, d) as i32;
    }
    #[inline]
    fn odd_part(t0: i64, t1: i64, t2: i64, t3: i64) -> (i64, i64, i64, i64) {
        let z1 = t0 + t3;
        let z2 = t1 + t2;
        let z3 = t0 + t2;
        let z4 = t1 + t3;
        let z5 = (z3 + z4) * F1_175;
        let t0 = t0 * F0_298;
        let t1 = t1 * F2_053;
        let t2 = t2 * F3_072;
        let t3 = t3 * F1_501;
        let z1 = z1 * -F0_899;
        let z2 = z2 * -F2_562;
        let z3 = z3 * -F1_961 + z5;
        let z4 = z4 * -F0_390 + z5;
        (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4)
    }
    for row in 0..8 {
        let w = &ws[row * 8..row * 8 + 8];
        let o = &mut out[row * stride..row * stride + 8];
        let d = CONST_BITS + PASS1_BITS + 3;
        if w[1..].iter().all(|&x| x == 0) {
            o.fill(range_limit(descale(w[0] as i64, PASS1_BITS + 3)));
            continue;
        }
        let (z2, z3) = (w[2] as i64, w[6] as i64);
        let z1 = (z2 + z3) * F0_541;
        let tmp2 = z1 + z3 * -F1_847;
        let tmp3 = z1 + z2 * F0_765;
        let tmp0 = (w[0] as i64 + w[4] as i64) << CONST_BITS;
        let tmp1 = (w[0] as i64 - w[4] as i64) << CONST_BITS;
        let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
        let (o0, o1, o2, o3) = odd_part(w[7] as i64, w[5] as i64, w[3] as i64, w[1] as i64);
        o[0] = range_limit(descale(tmp10 + o3, d));
        o[7] = range_limit(descale(tmp10 - o3, d));
        o[1] = range_limit(descale(tmp11 + o2, d));
        o[6] = range_limit(descale(tmp11 - o2, d));
        o[2] = range_limit(descale(tmp12 + o1, d));
        o[5] = range_limit(descale(tmp12 - o1, d));
        o[3] = range_limit(descale(tmp13 + o0, d));
        o[4] = range_limit(descale(tmp13 - o0, d));
    }
}

/// One component upsampled to the image size, as `jdsample.c` does with fancy upsampling.
fn upsample(c: &Component, plane: &[u8], stride: usize, f: &Frame) -> R<Vec<u8>> {
    let (w, h) = (f.width, f.height);
    let (dw, dh) = (c.dw, c.dh);
    let mut out = vec![0u8; w * h];
    let row = |y: usize| &plane[y * stride..y * stride + dw];
    if c.h == f.hmax && c.v == f.vmax {
        for y in 0..h {
            out[y * w..(y + 1) * w].copy_from_slice(&row(y)[..w]);
        }
    } else if c.h * 2 == f.hmax && c.v == f.vmax {
        let mut tmp = vec![0u8; 2 * dw];
        for y in 0..h {
            h2v1(row(y), &mut tmp);
            out[y * w..(y + 1) * w].copy_from_slice(&tmp[..w]);
        }
    } else if c.h == f.hmax && c.v * 2 == f.vmax {
        for y in 0..h {
            let inrow = y / 2;
            let (other, bias) = if y % 2 == 0 {
                (inrow.saturating_sub(1), 1)
            } else {
                ((inrow + 1).min(dh - 1), 2)
            };
            let (a, b) = (row(inrow), row(other));
            for x in 0..w {
                out[y * w + x] = ((a[x] as u32 * 3 + b[x] as u32 + bias) >> 2) as u8;
            }
        }
    } else if c.h * 2 == f.hmax && c.v * 2 == f.vmax {
        let mut tmp = vec![0u8; 2 * dw];
        let mut colsum = vec![0i32; dw];
        for y in 0..h {
            let inrow = y / 2;
            if dw > 2 {
                let other = if y % 2 == 0 {
                    inrow.saturating_sub(1)
                } else {
                    (inrow + 1).min(dh - 1)
                };
                let (a, b) = (row(inrow), row(other));
                for x in 0..dw {
                    colsum[x] = a[x] as i32 * 3 + b[x] as i32;
                }
                h2v2_row(&colsum, &mut tmp);
            } else {
                for (x, &p) in row(inrow).iter().enumerate() {
                    tmp[2 * x] = p;
                    tmp[2 * x + 1] = p;
                }
            }
            out[y * w..(y + 1) * w].copy_from_slice(&tmp[..w]);
        }
    } else if f.hmax.is_multiple_of(c.h) && f.vmax.is_multiple_of(c.v) {
        let (he, ve) = (f.hmax / c.h, f.vmax / c.v);
        for y in 0..h {
            let r = &plane[(y / ve) * stride..];
            for x in 0..w {
                out[y * w + x] = r[x / he];
            }
        }
    } else {
        return Err(Unsupported(format!(
            "sampling factors {}x{} of {}x{}",
            c.h, c.v, f.hmax, f.vmax
        )));
    }
    Ok(out)
}

/// `h2v1_fancy_upsample` (or plain replication for rows of at most 2 samples).
fn h2v1(inp: &[u8], out: &mut [u8]) {
    let n = inp.len();
    if n <= 2 {
        for (i, &p) in inp.iter().enumerate() {
            out[2 * i] = p;
            out[2 * i + 1] = p;
        }
        return;
    }
    let p = |i: usize| inp[i] as u32;
    out[0] = inp[0];
    out[1] = ((p(0) * 3 + p(1) + 2) >> 2) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((p(i) * 3 + p(i - 1) + 1) >> 2) as u8;
        out[2 * i + 1] = ((p(i) * 3 + p(i + 1) + 2) >> 2) as u8;
    }
    out[2 * n - 2] = ((p(n - 1) * 3 + p(n - 2) + 1) >> 2) as u8;
    out[2 * n - 1] = inp[n - 1];
}

/// The horizontal half of `h2v2_fancy_upsample` on column sums `3 * near + far`.
fn h2v2_row(cs: &[i32], out: &mut [u8]) {
    let n = cs.len();
    out[0] = ((cs[0] * 4 + 8) >> 4) as u8;
    out[1] = ((cs[0] * 3 + cs[1] + 7) >> 4) as u8;
    for i in 1..n - 1 {
        out[2 * i] = ((cs[i] * 3 + cs[i - 1] + 8) >> 4) as u8;
        out[2 * i + 1] = ((cs[i] * 3 + cs[i + 1] + 7) >> 4) as u8;
    }
    out[2 * n - 2] = ((cs[n - 1] * 3 + cs[n - 2] + 8) >> 4) as u8;
    out[2 * n - 1] = ((cs[n - 1] * 4 + 7) >> 4) as u8;
}

/// libjpeg's YCbCr->RGB tables (`build_ycc_rgb_table`).
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i64; 256],
    cb_g: [i64; 256],
}

impl YccTables {
    fn new() -> Self {
        const SCALEBITS: i64 = 16;
        const ONE_HALF: i64 = 1 << (SCALEBITS - 1);
        let fix = |x: f64| (x * (1i64 << SCALEBITS) as f64 + 0.5) as i64;
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i64 - 128;
            t.cr_r[i] = ((fix(1.40200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cb_b[i] = ((fix(1.77200) * x + ONE_HALF) >> SCALEBITS) as i32;
            t.cr_g[i] = -fix(0.71414) * x;
            t.cb_g[i] = -fix(0.34414) * x + ONE_HALF;
        }
        t
    }

    #[inline]
    fn rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let y = y as i32;
        let (cb, cr) = (cb as usize, cr as usize);
        [
            y + self.cr_r[cr],
            y + ((self.cb_g[cb] + self.cr_g[cr]) >> 16) as i32,
            y + self.cb_b[cb],
        ]
    }
}

fn clamp8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

fn finish(mut f: Frame, saw_jfif: bool, adobe: Option<u8>) -> R<RgbImage> {
    if f.progressive {
        // libjpeg smooths blocks whose first AC coefficients were never fully received.
        for c in &f.comps {
            if c.coef_bits[..10].iter().any(|&b| b != 0) {
                return Err(Unsupported(
                    "progressive JPEG with incomplete coefficients (block smoothing)".into(),
                ));
            }
        }
    }
    // Inverse DCT of every block into per-component sample planes.
    let mut planes = Vec::with_capacity(f.comps.len());
    for c in &mut f.comps {
        let q =
            c.qt.ok_or_else(|| Corrupt(format!("component {} has no scan", c.id)))?;
        let stride = c.bw * 8;
        let mut plane = vec![0u8; stride * c.bh * 8];
        for by in 0..c.bh {
            for bx in 0..c.bw {
                let off = (by * c.bw + bx) * 64;
                idct_islow(
                    &c.coefs[off..off + 64],
                    &q,
                    &mut plane[by * 8 * stride + bx * 8..],
                    stride,
                );
            }
        }
        c.coefs = Vec::new();
        planes.push(plane);
    }
    let mut up = Vec::with_capacity(f.comps.len());
    for (c, p) in f.comps.iter().zip(&planes) {
        up.push(upsample(c, p, c.bw * 8, &f)?);
    }
    drop(planes);
    let n = f.width * f.height;
    let mut rgb = vec![0u8; n * 3];
    match f.comps.len() {
        1 => {
            for (o, &y) in rgb.chunks_exact_mut(3).zip(&up[0]) {
                o.fill(y);
            }
        }
        3 => {
            let ids = [f.comps[0].id, f.comps[1].id, f.comps[2].id];
            let is_rgb = if saw_jfif {
                false
            } else if let Some(t) = adobe {
                t == 0
            } else {
                ids == [82, 71, 66]
            };
            if is_rgb {
                for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                    o.copy_from_slice(&[up[0][i], up[1][i], up[2][i]]);
                }
            } else {
                let t = YccTables::new();
                for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                    let v = t.rgb(up[0][i], up[1][i], up[2][i]);
                    o.copy_from_slice(&[clamp8(v[0]), clamp8(v[1]), clamp8(v[2])]);
                }
            }
        }
        4 => {
            let ycck = matches!(adobe, Some(t) if t != 0);
            let t = YccTables::new();
            for (i, o) in rgb.chunks_exact_mut(3).enumerate() {
                // libjpeg's CMYK output (YCCK converted by ycck_cmyk_convert)...
                let (c, m, y) = if ycck {
                    let v = t.rgb(up[0][i], up[1][i], up[2][i]);
                    (clamp8(255 - v[0]), clamp8(255 - v[1]), clamp8(255 - v[2]))
                } else {
                    (up[0][i], up[1][i], up[2][i])
                };
                let k = up[3][i];
                // ...read by PIL as "CMYK;I" (inverted), then Convert.c's cmyk2rgb.
                let nk = 255 - (255 - k as i32);
                let muldiv255 = |a: i32, b: i32| {
                    let t = a * b + 128;
                    ((t >> 8) + t) >> 8
                };
                let conv = |v: u8| clamp8(nk - muldiv255(255 - v as i32, nk));
                o.copy_from_slice(&[conv(c), conv(m), conv(y)]);
            }
        }
        _ => unreachable!("checked in parse_sof"),
    }
    Ok(RgbImage::from_raw(f.width as u32, f.height as u32, rgb)
        .expect("buffer size matches dimensions"))
}

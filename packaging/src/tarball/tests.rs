//! The parallel gzip: one member any reader decodes, the same bytes whatever the thread count.

use std::io::Read;

use super::*;

fn entries(sizes: &[usize]) -> Vec<Entry> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            // Compressible but not trivial: a counter in text.
            let data: Vec<u8> = (0..size).map(|j| b"0123456789abcdef"[(j / 7 + i) % 16]).collect();
            Entry {
                path: format!("d/f{i:03}"),
                content: Content::File { mode: 0o644, source: Source::Bytes(data) },
            }
        })
        .collect()
}

fn tgz(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    write_tgz(entries, 1, &mut out).unwrap();
    out
}

#[test]
fn one_member_that_decodes_to_the_tar_stream() {
    // Empty, below one piece, exactly at piece boundaries, and several pieces.
    for sizes in [vec![], vec![10], vec![CHUNK - 1024, 0], vec![CHUNK * 3 + 17, 5000, CHUNK / 2]] {
        let gz = tgz(&entries(&sizes));
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        // GzDecoder reads one member only: it must see the whole archive.
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut tar_bytes).unwrap();
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((entry.path().unwrap().display().to_string(), data.len()));
        }
        let want: Vec<(String, usize)> = std::iter::once(("d/".to_owned(), 0))
            .filter(|_| !sizes.is_empty())
            .chain(sizes.iter().enumerate().map(|(i, &s)| (format!("d/f{i:03}"), s)))
            .collect();
        assert_eq!(seen, want, "sizes {sizes:?}");
        // The trailer's size is the tar stream's.
        let isize = u32::from_le_bytes(gz[gz.len() - 4..].try_into().unwrap());
        assert_eq!(isize as usize, tar_bytes.len());
    }
}

#[test]
fn pieces_do_not_depend_on_scheduling() {
    let all = entries(&[CHUNK * 2 + 3, 77, CHUNK]);
    let first = tgz(&all);
    for _ in 0..3 {
        assert_eq!(tgz(&all), first);
    }
    // Each piece alone, sequentially, in one thread: the same bytes as the parallel writer.
    let mut stream = Vec::new();
    write_tar_plain(&all, &mut stream);
    let mut sequential = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let pieces: Vec<&[u8]> = stream.chunks(CHUNK).collect();
    let count = pieces.len() + usize::from(stream.len() % CHUNK == 0);
    for i in 0..count {
        let data = pieces.get(i).copied().unwrap_or(&[]);
        let dict = if i == 0 { &[][..] } else { &pieces[i - 1][CHUNK - DICT..] };
        sequential.extend(deflate(dict, data, i == count - 1).unwrap());
    }
    let mut crc = Crc::new();
    crc.update(&stream);
    sequential.extend(crc.sum().to_le_bytes());
    sequential.extend((stream.len() as u32).to_le_bytes());
    assert_eq!(sequential, first);
}

/// The uncompressed tar stream, as `write_tgz` produces it before compression.
fn write_tar_plain(entries: &[Entry], out: &mut Vec<u8>) {
    let gz = tgz(entries);
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(out).unwrap();
}

//! Small pictures of images, made with limits: a file that claims to be an enormous
//! picture (a decompression bomb) or is not a valid one is refused, not decoded.

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// The longest side of a thumbnail, pixels.
pub const MAX_SIDE: u32 = 320;

/// The most bytes a thumbnail takes (a 320×320 PNG is far below).
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The widest or tallest image decoded, pixels.
const MAX_DIMENSION: u32 = 16_384;

/// The most memory one decode may take, bytes.
const MAX_ALLOC: u64 = 256 * 1024 * 1024;

/// A thumbnail's bytes and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Thumbnail {
    /// The encoded picture.
    pub bytes: Vec<u8>,
    /// `image/jpeg` or `image/png`.
    pub content_type: &'static str,
}

/// Why there is no thumbnail.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// Not a PNG, JPEG, GIF or WebP image (whatever its declared type).
    #[error("not a PNG, JPEG, GIF or WebP image")]
    NotAnImage,
    /// Malformed, or over the decoder's limits.
    #[error("cannot decode the image: {0}")]
    Decode(#[from] image::ImageError),
}

/// A thumbnail of `bytes`, no larger than [`MAX_SIDE`] on either side, keeping the
/// aspect ratio (a smaller image keeps its size): a PNG when the image has
/// transparency, else a JPEG. The format is read from the bytes, not trusted from the
/// upload's declared type. CPU-bound: run it off the async threads.
pub fn make(bytes: &[u8]) -> Result<Thumbnail, ThumbnailError> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ThumbnailError::NotAnImage)?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)
    ) {
        return Err(ThumbnailError::NotAnImage);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_DIMENSION);
    limits.max_image_height = Some(MAX_DIMENSION);
    limits.max_alloc = Some(MAX_ALLOC);
    let mut reader = reader;
    reader.limits(limits);
    let image = reader.decode()?;
    let small = if image.width() > MAX_SIDE || image.height() > MAX_SIDE {
        image.thumbnail(MAX_SIDE, MAX_SIDE)
    } else {
        image
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if small.color().has_alpha() {
        small.write_to(&mut out, ImageFormat::Png)?;
        "image/png"
    } else {
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
        rgb.write_with_encoder(encoder)?;
        "image/jpeg"
    };
    Ok(Thumbnail {
        bytes: out.into_inner(),
        content_type,
    })
}

/// The media type of a thumbnail's bytes, as [`make`] wrote them.
pub fn content_type(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb, Rgba};

    fn encoded(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn size_of(thumb: &Thumbnail) -> (u32, u32) {
        let image = image::load_from_memory(&thumb.bytes).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn a_large_picture_shrinks_to_fit_keeping_its_shape() {
        let big = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(1200, 600, Rgb([200, 10, 10])));
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::WebP,
        ] {
            let thumb = make(&encoded(big.clone(), format)).unwrap();
            assert_eq!(size_of(&thumb), (320, 160), "{format:?}");
        }
    }

    #[test]
    fn transparency_gives_a_png_and_opaque_pictures_a_jpeg() {
        let clear = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(10, 10, Rgba([0, 0, 0, 0])));
        let thumb = make(&encoded(clear, ImageFormat::Png)).unwrap();
        assert_eq!(thumb.content_type, "image/png");
        assert_eq!(content_type(&thumb.bytes), "image/png");
        let solid = DynamicImage::ImageRgb8(ImageBuffer::from_pixel(10, 10, Rgb([1, 2, 3])));
        let thumb = make(&encoded(solid, ImageFormat::Png)).unwrap();
        assert_eq!(thumb.content_type, "image/jpeg");
        assert_eq!(content_type(&thumb.bytes), "image/jpeg");
        assert_eq!(size_of(&thumb), (10, 10), "a small picture keeps its size");
    }

    #[test]
    fn what_is_not_a_picture_is_refused() {
        assert!(matches!(
            make(b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            Err(ThumbnailError::NotAnImage)
        ));
        assert!(matches!(make(b"hello"), Err(ThumbnailError::NotAnImage)));
        let mut bmp = b"BM".to_vec();
        bmp.resize(64, 0);
        assert_eq!(image::guess_format(&bmp).unwrap(), ImageFormat::Bmp);
        assert!(
            matches!(make(&bmp), Err(ThumbnailError::NotAnImage)),
            "only the four formats"
        );
    }

    #[test]
    fn a_truncated_picture_is_an_error_not_a_crash() {
        let png = encoded(
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(64, 64, Rgb([9, 9, 9]))),
            ImageFormat::Png,
        );
        assert!(matches!(
            make(&png[..png.len() / 2]),
            Err(ThumbnailError::Decode(_))
        ));
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_it_is_decoded() {
        // A valid PNG header claiming 100,000 x 100,000 pixels: ~40 GB decoded.
        let mut png = encoded(
            DynamicImage::ImageRgb8(ImageBuffer::from_pixel(1, 1, Rgb([0, 0, 0]))),
            ImageFormat::Png,
        );
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = make(&png).unwrap_err();
        assert!(
            matches!(err, ThumbnailError::Decode(image::ImageError::Limits(_))),
            "{err:?}"
        );
    }

    /// The CRC-32 of a PNG chunk (type and data).
    fn crc(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}

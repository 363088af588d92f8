//! The TOTP setup's `otpauth://` URI as a QR code, rendered to SVG in the module (no
//! third-party script, no network): the page shows it as an image for an authenticator app.

use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};

/// The SVG of a QR code holding `text` (medium error correction, dark on white, a quiet zone).
pub fn svg(text: &str) -> Result<String, qrcode::types::QrError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(232, 232)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    #[test]
    fn renders_an_svg_without_styles_or_scripts() {
        let out = super::svg("otpauth://totp/medrelay:dr.lee?secret=JBSWY3DPEHPK3PXP").unwrap();
        assert!(out.contains("<svg"));
        assert!(!out.contains("style") && !out.contains("script"));
    }
}

//! E2B template IDs that name a bhatti image of another name: the code interpreter SDK's
//! default template `code-interpreter-v1` (and `code-interpreter`) is the built-in
//! `code-interpreter` image (`images/rootfs/build-code-interpreter`). Any other ID is the
//! image's own name.

/// The bhatti image an E2B template ID boots.
pub fn image_of(template_id: &str) -> &str {
    match template_id {
        "code-interpreter-v1" | "code-interpreter" => "code-interpreter",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_ids_table() {
        let rows = [
            ("the SDK's default", "code-interpreter-v1", "code-interpreter"),
            ("the image's own name", "code-interpreter", "code-interpreter"),
            ("another bhatti image", "minimal", "minimal"),
            ("a later version is not guessed", "code-interpreter-v2", "code-interpreter-v2"),
        ];
        for (name, id, want) in rows {
            assert_eq!(image_of(id), want, "{name}");
        }
    }
}

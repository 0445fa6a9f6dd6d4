//! Untrusted text to safe HTML: Markdown is rendered first, then the HTML is sanitized with an
//! allow-list (no scripts, no event handlers, no `javascript:` links, no inline styles), so a
//! task's content can never run code on the page. Code blocks are kept.

use std::sync::OnceLock;

use pulldown_cmark::{html, Options, Parser};

fn cleaner() -> &'static ammonia::Builder<'static> {
    static CLEANER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    CLEANER.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.url_schemes(["http", "https", "mailto"].into_iter().collect())
            .link_rel(Some("noopener noreferrer nofollow"))
            .add_generic_attributes(["class"].iter())
            .add_tags(["input"].iter())
            .add_tag_attributes("input", ["type", "checked", "disabled"].iter());
        b
    })
}

/// Markdown → sanitized HTML.
pub fn render(text: &str) -> String {
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    options.insert(Options::ENABLE_TASKLISTS);
    let mut raw = String::with_capacity(text.len() + text.len() / 4);
    html::push_html(&mut raw, Parser::new_ext(text, options));
    cleaner().clean(&raw).to_string()
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn scripts_handlers_and_javascript_links_are_removed() {
        let out = render(
            "<script>alert(1)</script>\n\n<img src=x onerror=\"alert(2)\">\n\n[x](javascript:alert(3)) <a href=\"javascript:alert(4)\">y</a>",
        );
        assert!(!out.contains("<script"), "{out}");
        assert!(!out.contains("onerror"), "{out}");
        assert!(!out.contains("javascript:"), "{out}");
    }

    #[test]
    fn code_blocks_and_emphasis_survive() {
        let out = render("**bold**\n\n```rust\nfn main() { let a = 1 < 2; }\n```");
        assert!(out.contains("<strong>bold</strong>"), "{out}");
        assert!(out.contains("<pre><code class=\"language-rust\">"), "{out}");
        assert!(out.contains("1 &lt; 2"), "{out}");
    }
}

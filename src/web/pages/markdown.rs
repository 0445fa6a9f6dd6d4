//! Untrusted text to safe HTML: Markdown is rendered first, then the HTML is sanitized with an
//! allow-list, so a task's content can neither run code on the page nor pass for the page:
//! no scripts, event handlers or `javascript:` links; no `class`, `style` or form elements (the
//! app's own look stays the app's); no relative URLs (a same-origin `<img src>` would be a
//! request made in the viewer's name); images only from `data:image/` or the origins an admin
//! allows (`content.image_origins`). Code blocks are kept.

use std::borrow::Cow;
use std::sync::OnceLock;

use pulldown_cmark::{html, Options, Parser};

static IMAGE_ORIGINS: OnceLock<Vec<String>> = OnceLock::new();

/// Sets the origins task images may come from; call once at start-up, before any page.
pub fn allow_images_from(origins: Vec<String>) {
    let _ = IMAGE_ORIGINS.set(origins);
}

/// Keeps an attribute's value, unless it is an image from elsewhere or a `data:` URL outside
/// an image.
fn filter_attribute<'u>(element: &str, attribute: &str, value: &'u str) -> Option<Cow<'u, str>> {
    let lower = value.trim_start().to_ascii_lowercase();
    match (element, attribute) {
        ("img", "src") => {
            let allowed = lower.starts_with("data:image/")
                || IMAGE_ORIGINS
                    .get()
                    .is_some_and(|o| o.iter().any(|origin| value.starts_with(origin.as_str())));
            allowed.then_some(Cow::Borrowed(value))
        }
        _ if lower.starts_with("data:") => None,
        _ => Some(Cow::Borrowed(value)),
    }
}

fn cleaner() -> &'static ammonia::Builder<'static> {
    static CLEANER: OnceLock<ammonia::Builder<'static>> = OnceLock::new();
    CLEANER.get_or_init(|| {
        let mut b = ammonia::Builder::default();
        b.url_schemes(["http", "https", "mailto", "data"].into_iter().collect())
            .url_relative(ammonia::UrlRelative::Deny)
            .link_rel(Some("noopener noreferrer nofollow"))
            .attribute_filter(filter_attribute);
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
    fn content_cannot_dress_as_the_app_or_reach_it() {
        let out = render(
            "<div class=\"modal\" style=\"position:fixed\">Session expired <input type=password><button>Sign in</button></div>\n\n<img src=\"/p/1/review\"> <img src=\"https://elsewhere.example/x.png\"> <img src=\"data:image/png;base64,AAAA\"> <a href=\"/admin\">a</a> <a href=\"data:text/html,x\">b</a>\n\n- [x] done",
        );
        for banned in [
            "class=",
            "style=",
            "<input",
            "<button",
            "/p/1/review",
            "elsewhere",
            "/admin",
            "data:text",
        ] {
            assert!(!out.contains(banned), "{banned} in {out}");
        }
        assert!(out.contains("data:image/png;base64,AAAA"), "{out}");
    }

    #[test]
    fn code_blocks_and_emphasis_survive() {
        let out = render("**bold**\n\n```rust\nfn main() { let a = 1 < 2; }\n```");
        assert!(out.contains("<strong>bold</strong>"), "{out}");
        assert!(out.contains("<pre><code>"), "{out}");
        assert!(out.contains("1 &lt; 2"), "{out}");
    }
}

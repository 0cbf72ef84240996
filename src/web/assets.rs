//! The page's files, compiled into the binary: nothing is read from disk
//! at run time, so no request path can reach a file the node did not
//! mean to serve. The script is hand-written (no library, no build step):
//! a canvas map with pan and zoom, the live feed, a legend, a side panel
//! with a chart of a clicked feature's recent windows and a time slider.

/// The page.
pub const INDEX_HTML: &str = include_str!("page/index.html");
/// Its script.
pub const MAP_JS: &str = include_str!("page/map.js");
/// Its style.
pub const MAP_CSS: &str = include_str!("page/map.css");

/// The asset called `name` under `/assets/`: its content type and bytes.
pub fn get(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "map.js" => Some(("text/javascript; charset=utf-8", MAP_JS)),
        "map.css" => Some(("text/css; charset=utf-8", MAP_CSS)),
        _ => None,
    }
}

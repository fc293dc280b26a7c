//! Real browsers for the interop tests: headless Chromium (chromedriver)
//! and Firefox ESR (WebDriver BiDi), each inside a loopback-only namespace.

pub mod chromium;
pub mod firefox;

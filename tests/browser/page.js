// What tests/e2e/test_browser.py calls in the page through Playwright (window.pageTest), around the real
// analytics.js (window.AnalyticsNext, the UMD build of @segment/analytics-next).
"use strict";

// A JSON copy of a value: what Playwright hands back to the test.
const plain = (value) => JSON.parse(JSON.stringify(value === undefined ? null : value));

window.pageTest = {
  // AnalyticsBrowser.load(settings, options); resolves once analytics.js is ready (its settings fetched and its
  // plugins loaded), rejects when it cannot be.
  async load(settings, options) {
    window.ajs = AnalyticsNext.AnalyticsBrowser.load(settings, options || {});
    const [analytics] = await window.ajs;
    return { version: analytics.VERSION };
  },

  // One analytics.js call (`track`, `identify`, ...); resolves with the event analytics.js built and the reason
  // its delivery failed, if it did. With the default delivery strategy the call resolves after its request.
  async call(method, args) {
    const ctx = await window.ajs[method](...args);
    const failed = ctx.failedDelivery();
    return { event: plain(ctx.event), failed: failed ? String(failed.reason) : null };
  },

  // A fetch of the page's own: the status, type ("cors", or "opaque" for mode "no-cors") and body of the answer,
  // or the error the browser raised instead. With `gzip`, the body is sent gzip-compressed (CompressionStream).
  async fetch(url, init, gzip) {
    init = { ...init };
    if (gzip) {
      const stream = new Blob([init.body]).stream().pipeThrough(new CompressionStream("gzip"));
      init.body = await new Response(stream).arrayBuffer();
    }
    try {
      const response = await fetch(url, init);
      return { status: response.status, type: response.type, text: await response.text() };
    } catch (e) {
      return { error: String(e) };
    }
  },
};

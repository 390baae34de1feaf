// Page loads and a WeChat client for the page helper's tests, with nothing but Node's standard library.
//
// A page load is a fresh `vm` context holding exactly the globals the helper may use: window,
// location, navigator, sessionStorage, fetch, wx and, when asked for, document. `fetch` is Node's
// real one (recording what it sends) against the live service; the WeChat client verifies each
// wx.config with the sandbox's /sandbox/verify, the emulator's own check of a signature.
import vm from 'node:vm';

export const SERVICE = process.env.JSSDK_SERVICE_URL;
export const SANDBOX = process.env.JSSDK_SANDBOX_URL;
if (!SERVICE || !SANDBOX) throw new Error('set JSSDK_SERVICE_URL and JSSDK_SANDBOX_URL (tests/test_helper_js.py does)');

export const IOS_WECHAT =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) ' +
  'Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN';
export const ANDROID_WECHAT =
  'Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A) AppleWebKit/537.36 (KHTML, like Gecko) ' +
  'Chrome/120.0.6099.144 Mobile Safari/537.36 MicroMessenger/8.0.47.2560(0x28002F35) WeChat/arm64';

export async function asset(path) {
  const response = await fetch(SERVICE + path);
  if (!response.ok) throw new Error(`GET ${path}: HTTP ${response.status}`);
  return response.text();
}

export const HELPER = await asset('/v1/jssdk-share.js');

const withoutFragment = (url) => url.split('#')[0];

class MemoryStorage {
  #items = new Map();
  getItem(key) { return this.#items.has(key) ? this.#items.get(key) : null; }
  setItem(key, value) { this.#items.set(key, String(value)); }
  removeItem(key) { this.#items.delete(key); }
}

/** One page load at `href`; `document` is left out unless given. */
export function openPage({ href, userAgent, document, sessionStorage = new MemoryStorage() }) {
  const requests = [];
  const window = {
    location: { href },
    navigator: { userAgent },
    sessionStorage,
    fetch: (url, init) => {
      requests.push({ url: String(url), body: init && init.body ? JSON.parse(init.body) : undefined });
      return fetch(url, init);
    },
  };
  if (document) window.document = document;
  window.window = window;
  vm.createContext(window);
  return {
    window,
    requests,
    sessionStorage,
    run(source, filename) { vm.runInContext(source, window, { filename }); },
    /** A single-page app's route change: history.pushState changes location.href, nothing reloads. */
    pushState(url) { window.location.href = url; },
    sent(path) { return requests.filter((request) => request.url === SERVICE + path).map((r) => r.body); },
  };
}

/**
 * WeChat's client as far as wx.config and the share APIs go. iOS verifies the URL this page load
 * began at, Android the current one; a host outside `secureDomains` is "invalid url domain"; an
 * account without the share permission gets "permission denied" from the share APIs.
 */
export class FakeWeChat {
  constructor(page, { platform, secureDomains = ['example.com', 'localhost', '127.0.0.1'], sharePermission = true }) {
    this.page = page;
    this.platform = platform;
    this.secureDomains = secureDomains;
    this.sharePermission = sharePermission;
    this.landing = withoutFragment(page.window.location.href);
    this.configs = [];
    this.shared = {};
    this.state = 'idle';
    this.readyQueue = [];
    this.onError = null;
    this.lastError = null;
    page.window.wx = this;
  }

  config(config) {
    this.configs.push(JSON.parse(JSON.stringify(config)));
    const number = this.configs.length;
    this.state = 'verifying';
    this.enabled = config.jsApiList || [];
    const url = this.platform === 'ios' ? this.landing : withoutFragment(this.page.window.location.href);
    this.verify(url, config).then((errMsg) => {
      if (number !== this.configs.length) return;
      if (errMsg === 'config:ok') {
        this.state = 'ready';
        const queue = this.readyQueue.splice(0);
        queue.forEach((callback) => callback());
      } else {
        this.state = 'failed';
        this.lastError = { errMsg };
        if (this.onError) this.onError(this.lastError);
      }
    });
  }

  async verify(url, config) {
    const host = /^https?:\/\/([^/?#:]+)/i.exec(url)[1];
    if (!this.secureDomains.some((domain) => host === domain || host.endsWith('.' + domain))) {
      return 'config:invalid url domain';
    }
    const response = await fetch(SANDBOX + '/sandbox/verify', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ url, appId: config.appId, nonceStr: config.nonceStr, timestamp: config.timestamp,
                             signature: config.signature }),
    });
    return (await response.json()).errMsg;
  }

  ready(callback) {
    if (this.state === 'ready') callback();
    else this.readyQueue.push(callback);
  }

  error(callback) {
    this.onError = callback;
    if (this.state === 'failed') callback(this.lastError);
  }

  share(api, payload) {
    let errMsg = `${api}:ok`;
    if (this.state !== 'ready' || !this.enabled.includes(api)) errMsg = `${api}:the permission value is offline verifying`;
    else if (!this.sharePermission) errMsg = `${api}:permission denied`;
    if (errMsg !== `${api}:ok`) {
      payload.fail({ errMsg });
      return;
    }
    const { title, desc, link, imgUrl } = payload;
    this.shared[api] = JSON.parse(JSON.stringify({ title, desc, link, imgUrl }));
    payload.success({ errMsg });
  }

  updateAppMessageShareData(payload) { this.share('updateAppMessageShareData', payload); }

  updateTimelineShareData(payload) { this.share('updateTimelineShareData', payload); }
}

/** A page at `href` in WeChat on `platform`, with the helper loaded as a page would load it. */
export function wechatPage({ href, platform, document, ...wechat }) {
  const page = openPage({ href, userAgent: platform === 'ios' ? IOS_WECHAT : ANDROID_WECHAT, document });
  const wx = new FakeWeChat(page, { platform, ...wechat });
  page.run(HELPER, 'jssdk-share.js');
  return { page, wx, JssdkShare: page.window.JssdkShare };
}

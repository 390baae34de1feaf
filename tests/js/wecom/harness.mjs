// Pages in WeCom for the page-side tests: jsdom windows with the published JS-SDKs, and a WeCom client.
//
// A page load is a jsdom window at `href` with WeCom's user agent, that loads no resource of its own
// (every script is run here, from node_modules or from the live service) and whose `fetch` is Node's
// real one, recording what it sends. The client is WeCom's side of `window.WeixinJSBridge`, the bridge
// jweixin and @wecom/jssdk call into: it verifies each wx.config and wx.agentConfig by asking the
// sandbox (/sandbox/verify, /sandbox/verify-agent, the emulator's own checks) and fails them as WeCom
// does; it keeps the share listeners a page sets and runs one when the test "taps" its menu item.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { test as nodeTest } from 'node:test';
import vm from 'node:vm';

import { JSDOM, ResourceLoader, VirtualConsole } from 'jsdom';

export const SERVICE = process.env.JSSDK_SERVICE_URL;
const SANDBOX = process.env.JSSDK_SANDBOX_URL;
/** The WeCom app as the service names it, corp_id:agent_id. */
export const APP = process.env.JSSDK_WECOM_APP;
if (!SERVICE || !SANDBOX || !APP) {
  throw new Error('set JSSDK_SERVICE_URL, JSSDK_SANDBOX_URL and JSSDK_WECOM_APP (tests/test_helper_wecom_js.py does)');
}
export const [CORP_ID, AGENT_ID] = APP.split(':');

// WeCom's user agents name MicroMessenger too; 3.0.24 is where wx.agentConfig stops needing wx.config first.
export const WECOM_IOS =
  'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) ' +
  'Mobile/15E148 wxwork/3.1.0 MicroMessenger/7.0.1 Language/zh ColorScheme/Light';
export const OLD_WECOM_ANDROID =
  'Mozilla/5.0 (Linux; Android 10; MI 8 Build/QKQ1.190828.002; wv) AppleWebKit/537.36 (KHTML, like Gecko) ' +
  'Version/4.0 Chrome/77.0.3865.120 MQQBrowser/6.2 TBS/045130 Mobile Safari/537.36 wxwork/3.0.10 ' +
  'MicroMessenger/7.0.1 NetType/WIFI Language/zh';

const require = createRequire(import.meta.url);
const source = (module) => readFileSync(require.resolve(module), 'utf8');
/** jweixin-1.2.0 (the build WeCom documents), as `require('weixin-js-sdk')` gives it to a bundle. */
const JWEIXIN = source('weixin-js-sdk');
/** @wecom/jssdk's production build for a <script> tag: it defines the global `ww`. */
export const WECOM_JSSDK = source('@wecom/jssdk/dist/wecom.global.prod.js');
export const README = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');

async function asset(path) {
  const response = await fetch(SERVICE + path);
  if (!response.ok) throw new Error(`GET ${path}: HTTP ${response.status}`);
  return response.text();
}

export const HELPER = await asset('/v1/jssdk-share.js');

/** node:test's test, that fails rather than hangs when what it awaits never comes. */
export const test = (name, body) => nodeTest(name, { timeout: 20_000 }, body);

/** Resolves once `condition()` holds; fails, naming `what`, after `seconds`. */
export async function until(condition, what, seconds = 5) {
  const deadline = Date.now() + seconds * 1000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

const withoutFragment = (url) => url.split('#')[0];
const plain = (value) => JSON.parse(JSON.stringify(value));

/** A user agent for jsdom that fetches nothing: a page's scripts are run by the test. */
class NoResources extends ResourceLoader {
  fetch() { return null; }
}

/**
 * One page load at `href` in a WeCom `userAgent`. `answer(path, body)` may replace what the service
 * answered the page (a broken server, for the failure tests). What the page writes to its console
 * is kept in `console`, as [method, ...arguments].
 */
export function openPage({ href, userAgent, answer }) {
  const console = [];
  const virtualConsole = new VirtualConsole();
  for (const method of ['log', 'info', 'warn', 'error']) {
    virtualConsole.on(method, (...args) => console.push([method, ...args]));
  }
  virtualConsole.on('jsdomError', (error) => console.push(['jsdomError', error.message]));
  const dom = new JSDOM('<!doctype html><html><head><title>A WeCom page</title></head><body></body></html>',
                        { url: href, runScripts: 'outside-only', resources: new NoResources({ userAgent }),
                          virtualConsole });
  const { window } = dom;
  const requests = [];
  window.fetch = async (url, init) => {
    const request = { url: String(url), body: init && init.body ? JSON.parse(init.body) : undefined };
    requests.push(request);
    const response = await fetch(url, init);
    const path = request.url.startsWith(SERVICE) ? new URL(request.url).pathname : null;
    if (!answer || path === null) return response;
    const replaced = answer(path, await response.clone().json());
    if (replaced === undefined) return response;
    return new Response(JSON.stringify(replaced), { status: response.status, headers: response.headers });
  };
  const context = dom.getInternalVMContext();
  return {
    window,
    requests,
    console,
    run(code, filename) { new vm.Script(code, { filename }).runInContext(context); },
    /** jweixin as a bundle gets it: `window.wx = require('weixin-js-sdk')`. */
    loadJweixin() {
      window.module = { exports: {} };
      this.run(JWEIXIN, 'weixin-js-sdk/index.js');
      window.wx = window.module.exports;
      delete window.module;
    },
    /** A single-page app's route change. */
    pushState(url) { window.history.pushState(null, '', url); },
    /** The requests the page made to the service's `path` (query strings aside), in order. */
    sent(path) {
      return requests.filter((r) => r.url.startsWith(SERVICE) && new URL(r.url).pathname === path);
    },
  };
}

// What each share JSAPI the page invokes is the action of: its API (as pages name it) and menu event.
const SHARES = {
  sendAppMessage: ['onMenuShareAppMessage', 'menu:share:appmessage'],
  shareWechat: ['onMenuShareWechat', 'menu:share:wechat'],
  shareTimeline: ['onMenuShareTimeline', 'menu:share:timeline'],
};
const MENU_TO_SHARE = Object.fromEntries(Object.entries(SHARES).map(([api, [, menu]]) => [menu, api]));
const AGENT_CONFIG_ALONE = [3, 0, 24];

function versionBefore(version, than) {
  const mine = version.split('.').map(Number);
  for (let i = 0; i < than.length; i++) {
    if ((mine[i] || 0) !== than[i]) return (mine[i] || 0) < than[i];
  }
  return false;
}

async function post(path, body) {
  const response = await fetch(SANDBOX + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

/**
 * WeCom's client, as far as config, agentConfig and the share menu go, for the page in `page`.
 *
 * Both configs are verified for the page's current URL (what @wecom/jssdk signs in WeCom). Below
 * 3.0.24 an agentConfig before a successful config fails. A share runs only with the verify fields of
 * a config or agentConfig that passed and listed its API. `calls` records every JSAPI invoked, with
 * `started` and `finished` on one clock, so a test can tell what waited for what.
 */
export class WeComClient {
  constructor(page, { inject = true } = {}) {
    this.page = page;
    this.version = /wxwork\/([\d.]+)/i.exec(page.window.navigator.userAgent)[1];
    this.calls = [];
    this.verified = [];
    this.listeners = new Map();
    this.shared = {};
    this.clock = 0;
    this.waiting = [];
    if (inject) this.inject();
  }

  /** Put the bridge on the page, and say so as the client does. */
  inject() {
    const { window } = this.page;
    window.WeixinJSBridge = {
      invoke: (name, params, callback) => { this.#invoke(name, plain(params || {}), callback); },
      on: (event, callback) => { this.listeners.set(event, callback); },
    };
    window.document.dispatchEvent(new window.Event('WeixinJSBridgeReady'));
  }

  /** The calls of one JSAPI (client names: 'preVerifyJSAPI' is wx.config). */
  called(name) { return this.calls.filter((call) => call.name === name); }

  /** The config and agentConfig calls, in order, as [name, errMsg]. */
  configs() {
    return this.calls.filter((call) => call.name === 'preVerifyJSAPI' || call.name === 'agentConfig')
      .map((call) => [call.name, call.errMsg]);
  }

  /** Every call made so far has been answered. */
  settled() { return until(() => this.calls.every((call) => call.finished !== undefined), 'the client\'s answers'); }

  /** The user picks the share menu item `menu` ('menu:share:wechat', ...): what the page shared then. */
  async tap(menu) {
    const listener = this.listeners.get(menu);
    if (!listener) throw new Error(`the page set no listener for ${menu}`);
    const done = new Promise((resolve) => this.waiting.push({ name: MENU_TO_SHARE[menu], resolve }));
    listener({});
    return done;
  }

  async #invoke(name, params, callback) {
    const call = { name, params, started: ++this.clock };
    this.calls.push(call);
    const answer = await this.#answer(name, params);
    Object.assign(call, answer, { finished: ++this.clock });
    const { errMsg, errCode } = answer;
    callback({ err_msg: errMsg, ...(errCode === undefined ? {} : { errCode }) });
    for (const waiter of this.waiting.filter((w) => w.name === name)) {
      this.waiting.splice(this.waiting.indexOf(waiter), 1);
      waiter.resolve({ errMsg, shared: this.shared[name] });
    }
  }

  async #answer(name, params) {
    const url = withoutFragment(this.page.window.location.href);
    if (name === 'preVerifyJSAPI') {
      const { errMsg } = await post('/sandbox/verify', {
        url, appId: params.verifyAppId, nonceStr: params.verifyNonceStr, timestamp: params.verifyTimestamp,
        signature: params.verifySignature,
      });
      if (errMsg === 'config:ok') this.#grant('config', params.verifySignature, params.verifyJsApiList);
      return { errMsg };
    }
    if (name === 'agentConfig') {
      if (versionBefore(this.version, AGENT_CONFIG_ALONE) && !this.verified.some((v) => v.by === 'config')) {
        // WeCom documents the rule, not its message: this wording is the emulator's.
        return { errMsg: 'agentConfig:fail, wx.config has not succeeded on this client version' };
      }
      const { errMsg, errCode, signedWith } = await post('/sandbox/verify-agent', {
        corpid: params.corpid, agentid: params.agentid, url, nonceStr: params.nonceStr, timestamp: params.timestamp,
        signature: params.signature,
      });
      if (errMsg === 'agentConfig:ok') this.#grant('agentConfig', params.signature, params.jsApiList);
      return { errMsg, errCode, signedWith };
    }
    if (name in SHARES) {
      const permitted = this.verified.some((v) => v.signature === params.verifySignature &&
                                                  SHARES[name].some((api) => v.apis.includes(api)));
      if (!permitted) return { errMsg: `${name}:the permission value is offline verifying` };
      const { title, desc, link, img_url } = params;
      this.shared[name] = { title, desc, link, img_url };
      return { errMsg: `${name}:ok` };
    }
    // jweixin asks it after wx.config, for its own statistics.
    if (name === 'getNetworkType') return { errMsg: 'network_type:wifi' };
    return { errMsg: `${name}:function not exist` };
  }

  #grant(by, signature, list) {
    const apis = Array.isArray(list) ? list : String(list || '').split(/[;,]/);
    this.verified.push({ by, signature, apis });
  }
}

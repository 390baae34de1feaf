// The page helper (/v1/jssdk-share.js) against the live sandbox service, in iOS and Android WeChat.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ANDROID_WECHAT, FakeWeChat, HELPER, IOS_WECHAT, SERVICE, asset, openPage, wechatPage } from './harness.mjs';

const SHARE_APIS = ['updateAppMessageShareData', 'updateTimelineShareData'];

test('Android WeChat: signs location.href without its fragment and sets both share payloads', async () => {
  const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/shop/item?id=7#reviews', platform: 'android' });
  const answer = await JssdkShare.init({ endpoint: SERVICE, share: { title: 'Item 7', desc: 'Buy it today' } });
  assert.deepEqual(page.sent('/v1/share'), [
    { url: 'https://example.com/shop/item?id=7', share: { title: 'Item 7', desc: 'Buy it today' } },
  ]);
  assert.equal(wx.configs.length, 1);
  assert.deepEqual(wx.configs[0].jsApiList, SHARE_APIS);
  assert.equal(wx.configs[0].signature, answer.config.signature);
  assert.deepEqual(wx.shared.updateAppMessageShareData, answer.appMessage);
  assert.deepEqual(wx.shared.updateTimelineShareData, answer.timeline);
  assert.equal(answer.appMessage.title, 'Item 7');
  assert.equal(answer.appMessage.link, 'https://example.com/shop/item?id=7');
  assert.deepEqual(page.sent('/v1/report'), []);
});

test('iOS WeChat after a route change: signs the landing URL, shares the current page', async () => {
  const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/app/?from=menu', platform: 'ios' });
  page.pushState('https://example.com/app/orders/42?tab=items');
  const answer = await JssdkShare.init({ endpoint: SERVICE, share: { title: 'Order 42' } });
  const [request] = page.sent('/v1/share');
  assert.equal(request.url, 'https://example.com/app/?from=menu');
  assert.equal(request.page, 'https://example.com/app/orders/42?tab=items');
  assert.equal(answer.appMessage.link, 'https://example.com/app/orders/42?tab=items');
  assert.equal(wx.shared.updateTimelineShareData.link, 'https://example.com/app/orders/42?tab=items');
  assert.equal(JssdkShare.landingUrl, 'https://example.com/app/?from=menu');
});

test('iOS WeChat without a route change: the landing URL is the page, and the link is left to the service', async () => {
  const { page, JssdkShare } = wechatPage({ href: 'https://example.com/app/#/home', platform: 'ios' });
  const answer = await JssdkShare.init({ endpoint: SERVICE });
  assert.deepEqual(page.sent('/v1/share'), [{ url: 'https://example.com/app/', share: {} }]);
  assert.equal(answer.appMessage.link, 'https://example.com/app/');
});

test('the control: signing the current URL in iOS WeChat after a route change fails, and the doctor says why', async () => {
  const { page, wx } = wechatPage({ href: 'https://example.com/app/', platform: 'ios' });
  page.pushState('https://example.com/app/orders/42');
  const config = await (await fetch(`${SERVICE}/v1/signature?url=${encodeURIComponent('https://example.com/app/orders/42')}`)).json();
  const failed = new Promise((resolve) => wx.error(resolve));
  wx.config({ ...config });
  assert.equal((await failed).errMsg, 'config:invalid signature');
  const answer = await (await fetch(`${SERVICE}/v1/doctor`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ url: 'https://example.com/app/orders/42', landingUrl: 'https://example.com/app/',
                           userAgent: IOS_WECHAT, errMsg: 'config:invalid signature', appId: config.appId,
                           signature: config.signature, nonceStr: config.nonceStr, timestamp: config.timestamp }),
  })).json();
  assert.equal(answer.findings[0].code, 'ios_landing_url');
});

for (const platform of ['android', 'ios']) {
  test(`${platform} WeChat: init after each route change signs again and updates the card`, async () => {
    const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/app/', platform });
    await JssdkShare.init({ endpoint: SERVICE, share: { title: 'Home' } });
    page.pushState('https://example.com/app/cart');
    const answer = await JssdkShare.init({ endpoint: SERVICE, share: { title: 'Cart' } });
    const urls = page.sent('/v1/share').map((request) => request.url);
    assert.deepEqual(urls, platform === 'ios'
      ? ['https://example.com/app/', 'https://example.com/app/']
      : ['https://example.com/app/', 'https://example.com/app/cart']);
    assert.equal(wx.configs.length, 2);
    assert.equal(wx.shared.updateAppMessageShareData.title, 'Cart');
    assert.equal(answer.appMessage.link, 'https://example.com/app/cart');
  });
}

test('wx.error: the failure and what was signed go to /v1/report, and init rejects with the errMsg', async () => {
  // The service signs for localhost, but the official account's JS secure domains lack it.
  const { page, JssdkShare } = wechatPage({ href: 'http://localhost/promo?c=9', platform: 'android', secureDomains: ['example.com'] });
  const error = await JssdkShare.init({ endpoint: SERVICE }).then(() => assert.fail('init resolved'), (e) => e);
  assert.equal(error.message, 'config:invalid url domain');
  assert.equal(error.errMsg, 'config:invalid url domain');
  assert.ok(error.findings.some((finding) => finding.code === 'invalid_url_domain'), JSON.stringify(error.findings));
  const reports = page.sent('/v1/report');
  assert.equal(reports.length, 1);
  const { appId, signature, nonceStr, timestamp, ...rest } = reports[0];
  assert.ok(appId && signature && nonceStr && timestamp);
  assert.deepEqual(rest, { url: 'http://localhost/promo?c=9', landingUrl: 'http://localhost/promo?c=9',
                           userAgent: ANDROID_WECHAT, errMsg: 'config:invalid url domain' });
});

test('a share API failing after wx.ready is reported once and rejects with its errMsg', async () => {
  const { page, JssdkShare } = wechatPage({ href: 'https://example.com/p', platform: 'ios', sharePermission: false });
  const error = await JssdkShare.init({ endpoint: SERVICE }).then(() => assert.fail('init resolved'), (e) => e);
  assert.equal(error.errMsg, 'updateAppMessageShareData:permission denied');
  assert.deepEqual(error.findings.map((finding) => finding.code), ['permission_denied', 'signature_valid']);
  assert.equal(page.sent('/v1/report').length, 1);
});

test('the service refusing the page rejects with its error, and wx.config is never called', async () => {
  const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/p', platform: 'android' });
  const error = await JssdkShare.init({ endpoint: SERVICE, share: { link: 'https://elsewhere.org/' } })
    .then(() => assert.fail('init resolved'), (e) => e);
  assert.equal(error.code, 'host_not_allowed');
  assert.equal(error.status, 403);
  assert.match(error.message, /elsewhere\.org/);
  assert.equal(wx.configs.length, 0);
  assert.deepEqual(page.sent('/v1/report'), []);
});

test('options: the endpoint defaults to the script origin; jsApiList keeps the share APIs; openTagList and debug pass through', async () => {
  const document = { currentScript: { src: `${SERVICE}/v1/jssdk-share.js?v=1` } };
  const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/p', platform: 'android', document });
  await JssdkShare.init({ jsApiList: ['chooseImage'], openTagList: ['wx-open-launch-weapp'], debug: true, app: 'main' });
  assert.deepEqual(page.sent('/v1/share')[0].app, 'main');
  assert.deepEqual(wx.configs[0].jsApiList, ['chooseImage', ...SHARE_APIS]);
  assert.deepEqual(wx.configs[0].openTagList, ['wx-open-launch-weapp']);
  assert.equal(wx.configs[0].debug, true);
});

test('without document and without an endpoint, or without wx, init rejects before any request', async () => {
  const { page, JssdkShare } = wechatPage({ href: 'https://example.com/p', platform: 'android' });
  await assert.rejects(JssdkShare.init({}), /no endpoint/);
  delete page.window.wx;
  await assert.rejects(JssdkShare.init({ endpoint: SERVICE }), /no wx/);
  assert.deepEqual(page.requests, []);
});

test('a second init before the first finishes supersedes it', async () => {
  const { page, wx, JssdkShare } = wechatPage({ href: 'https://example.com/a', platform: 'android' });
  const first = JssdkShare.init({ endpoint: SERVICE, share: { title: 'A' } });
  page.pushState('https://example.com/b');
  const second = JssdkShare.init({ endpoint: SERVICE, share: { title: 'B' } });
  await assert.rejects(first, (error) => error.superseded === true && /superseded/.test(error.message));
  assert.equal((await second).appMessage.title, 'B');
  assert.equal(wx.shared.updateAppMessageShareData.title, 'B');
});

test('the landing URL belongs to the page load: a second copy of the script keeps it, a reload starts anew', async () => {
  const { page, JssdkShare } = wechatPage({ href: 'https://example.com/app/', platform: 'ios' });
  page.pushState('https://example.com/app/cart');
  page.run(HELPER, 'jssdk-share.js');
  assert.equal(page.window.JssdkShare.landingUrl, 'https://example.com/app/');
  assert.notEqual(page.window.JssdkShare, JssdkShare);
  await page.window.JssdkShare.init({ endpoint: SERVICE });
  // A full load of the current URL in the same tab: iOS WeChat now verifies this URL.
  const reload = openPage({ href: 'https://example.com/app/cart', userAgent: IOS_WECHAT, sessionStorage: page.sessionStorage });
  const wx = new FakeWeChat(reload, { platform: 'ios' });
  reload.run(HELPER, 'jssdk-share.js');
  const answer = await reload.window.JssdkShare.init({ endpoint: SERVICE });
  assert.equal(reload.sent('/v1/share')[0].url, 'https://example.com/app/cart');
  assert.deepEqual(wx.shared.updateAppMessageShareData, answer.appMessage);
});

test('the sandbox demo: the helper and the stand-in wx show the whole flow offline', async () => {
  const document = { currentScript: null };
  const page = openPage({ href: 'http://127.0.0.1:8080/demo', userAgent: 'Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0', document });
  document.currentScript = { src: `${SERVICE}/v1/jssdk-share.js` };
  page.run(HELPER, 'jssdk-share.js');
  document.currentScript = { src: `${SERVICE}/demo/sandbox-wx.js` };
  page.run(await asset('/demo/sandbox-wx.js'), 'sandbox-wx.js');
  const { wx, JssdkShare } = page.window;
  assert.equal(wx.sandbox, true);
  const answer = await JssdkShare.init({ share: { title: 'Hello from the demo' } });
  // The stand-in's record was made inside the page: compare its fields, not its realm.
  assert.deepEqual(JSON.parse(JSON.stringify(wx.shared.updateAppMessageShareData)), answer.appMessage);
  const failed = new Promise((resolve) => wx.error(resolve));
  wx.config({ ...answer.config, signature: '0'.repeat(40) });
  assert.equal((await failed).errMsg, 'config:invalid signature');
});

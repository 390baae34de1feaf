/*
 * jssdk-share.js: the jssdk-service page helper. No dependencies, no build step.
 *
 *   <script src="https://jssdk.example.com/v1/jssdk-share.js"></script>
 *   JssdkShare.init({ share: { title: 'My page', imgUrl: '/share.png' } });
 *
 * init(options) -> Promise of the service's answer ({config, appMessage, timeline}), once both share
 * payloads are set. Options: endpoint (default: where this script came from), app, share ({title,
 * desc, imgUrl, link}), jsApiList, openTagList, debug. It signs location.href without its fragment,
 * except in iOS WeChat, which verifies the landing URL (where this page load began) of a
 * history-routed page; the share link stays the current page. On wx.error, or when a share API
 * fails, it sends the details to /v1/report and rejects with WeChat's errMsg (error.findings holds
 * the service's diagnosis). Call init again after each route change of a single-page app.
 *
 * It touches nothing but window, location, navigator, fetch, wx and (if present) document.
 */
(function (window) {
  'use strict';

  var SHARE_APIS = ['updateAppMessageShareData', 'updateTimelineShareData'];
  var SHARE_FIELDS = ['title', 'desc', 'link', 'imgUrl'];
  var earlier = window.JssdkShare;
  // Captured when the page loads; a second copy of this script in the same page keeps the first's.
  var landingUrl = (earlier && earlier.landingUrl) || withoutFragment(String(window.location.href));
  var document = window.document;
  var script = document && document.currentScript;
  var scriptOrigin = originOf(script && script.src) || (earlier && earlier.scriptOrigin) || '';
  // Only the latest init may set the share card: a route change supersedes the one before.
  var latest = 0;
  var supersede = function () {};

  function withoutFragment(url) {
    var cut = url.indexOf('#');
    return cut < 0 ? url : url.slice(0, cut);
  }

  function originOf(url) {
    var match = /^(https?:\/\/[^\/?#]+)/i.exec(url || '');
    return match ? match[1] : '';
  }

  function isIosWeChat(userAgent) {
    return /MicroMessenger/i.test(userAgent) && /iPhone|iPad|iPod/.test(userAgent);
  }

  function failure(message, details) {
    var error = new Error(message);
    for (var key in details) {
      if (Object.prototype.hasOwnProperty.call(details, key)) error[key] = details[key];
    }
    return error;
  }

  function log(options, text, value) {
    var console = window.console;
    if (options.debug && console) console.log('[JssdkShare] ' + text, value === undefined ? '' : value);
  }

  function post(url, body) {
    return window.fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(null, function () {
        throw failure('HTTP ' + response.status + ' from ' + url, { status: response.status });
      }).then(function (answer) {
        if (response.ok) return answer;
        var problem = (answer && answer.error) || {};
        throw failure(problem.message || 'HTTP ' + response.status, { code: problem.code, status: response.status });
      });
    });
  }

  function shareFields(share) {
    var fields = {};
    for (var i = 0; i < SHARE_FIELDS.length; i++) {
      var value = share && share[SHARE_FIELDS[i]];
      if (value !== undefined && value !== null) fields[SHARE_FIELDS[i]] = value;
    }
    return fields;
  }

  function withShareApis(list) {
    var apis = (list || []).slice();
    for (var i = 0; i < SHARE_APIS.length; i++) {
      if (apis.indexOf(SHARE_APIS[i]) < 0) apis.push(SHARE_APIS[i]);
    }
    return apis;
  }

  function init(options) {
    options = options || {};
    var generation = ++latest;
    supersede();
    var wx = window.wx;
    var endpoint = String(options.endpoint || scriptOrigin).replace(/\/+$/, '');
    if (!endpoint) {
      return Promise.reject(failure('JssdkShare.init: no endpoint; pass options.endpoint', {}));
    }
    if (!wx || typeof wx.config !== 'function') {
      return Promise.reject(failure('JssdkShare.init: no wx; load jweixin (res.wx.qq.com) first', {}));
    }
    var userAgent = String((window.navigator && window.navigator.userAgent) || '');
    var page = withoutFragment(String(window.location.href));
    var signed = isIosWeChat(userAgent) ? landingUrl : page;
    var request = { url: signed, share: shareFields(options.share) };
    // After a route change on iOS the signed URL is not this page: the card is for this page.
    if (signed !== page) request.page = page;
    if (options.app) request.app = options.app;
    log(options, 'signing', signed);
    return post(endpoint + '/v1/share', request).then(function (answer) {
      if (generation !== latest) throw superseded();
      return configure(wx, answer, { options: options, endpoint: endpoint, page: page, userAgent: userAgent });
    });
  }

  function superseded() {
    return failure('JssdkShare.init: superseded by a later call', { superseded: true });
  }

  function configure(wx, answer, context) {
    var options = context.options;
    var config = answer.config;
    return new Promise(function (resolve, reject) {
      var settled = false;
      var pending = SHARE_APIS.length;
      supersede = function () {
        if (settled) return;
        settled = true;
        reject(superseded());
      };

      function fail(errMsg) {
        if (settled) return;
        settled = true;
        log(options, 'failed', errMsg);
        report(context, config, errMsg).then(function (findings) {
          log(options, 'the doctor says', findings);
          reject(failure(errMsg, { errMsg: errMsg, findings: findings }));
        });
      }

      function callbacks(api, payload) {
        var call = {};
        for (var key in payload) {
          if (Object.prototype.hasOwnProperty.call(payload, key)) call[key] = payload[key];
        }
        call.success = function () {
          pending -= 1;
          if (pending > 0 || settled) return;
          settled = true;
          log(options, 'share card set', answer.appMessage);
          resolve(answer);
        };
        call.fail = function (result) {
          fail((result && result.errMsg) || api + ':fail');
        };
        return call;
      }

      var wxConfig = {
        debug: !!options.debug,
        appId: config.appId,
        timestamp: config.timestamp,
        nonceStr: config.nonceStr,
        signature: config.signature,
        jsApiList: withShareApis(options.jsApiList || config.jsApiList)
      };
      var openTagList = options.openTagList || config.openTagList;
      if (openTagList && openTagList.length) wxConfig.openTagList = openTagList;
      wx.config(wxConfig);
      wx.ready(function () {
        if (settled) return;
        wx.updateAppMessageShareData(callbacks('updateAppMessageShareData', answer.appMessage));
        wx.updateTimelineShareData(callbacks('updateTimelineShareData', answer.timeline));
      });
      wx.error(function (result) {
        fail((result && result.errMsg) || 'config:fail');
      });
    });
  }

  // What was signed and what WeChat said, for the service's doctor; resolves with its findings.
  function report(context, config, errMsg) {
    return post(context.endpoint + '/v1/report', {
      url: context.page,
      landingUrl: landingUrl,
      appId: config.appId,
      signature: config.signature,
      nonceStr: config.nonceStr,
      timestamp: config.timestamp,
      userAgent: context.userAgent,
      errMsg: String(errMsg)
    }).then(function (answer) {
      return answer.findings || [];
    }, function () {
      return [];
    });
  }

  window.JssdkShare = { init: init, landingUrl: landingUrl, scriptOrigin: scriptOrigin };
})(window);

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
 * In WeCom (wxwork/<version> in the user agent) the answer also carries agentConfig and wechat: it
 * signs location.href without its fragment on every platform, runs wx.config (beta) and the app's
 * wx.agentConfig, and sets the listeners of WeCom's three share menu items (onMenuShareAppMessage,
 * onMenuShareWechat, onMenuShareTimeline); the promise resolves once both configs succeeded.
 *
 * It touches nothing but window, location, navigator, fetch, wx, WeixinJSBridge (whether it is
 * there yet) and (if present) document.
 */
(function (window) {
  'use strict';

  var SHARE_APIS = ['updateAppMessageShareData', 'updateTimelineShareData'];
  // WeCom's share menu items: forward to a chat, send to WeChat, post to Moments.
  var WECOM_SHARE_APIS = ['onMenuShareAppMessage', 'onMenuShareWechat', 'onMenuShareTimeline'];
  // Below WeCom 3.0.24 wx.agentConfig works only once wx.config has succeeded; from 3.0.24 on it may
  // be called at once (WeCom's JS-SDK docs; @wecom/jssdk runs config first below this version only).
  var WECOM_AGENT_CONFIG_ALONE = '3.0.24';
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

  // WeCom's version, or '' outside WeCom. Its user agent names MicroMessenger too: test this first.
  function weComVersion(userAgent) {
    var match = /wxwork\/([\d.]+)/i.exec(userAgent);
    return match ? match[1] : '';
  }

  function versionBefore(version, than) {
    var mine = version.split('.');
    var theirs = than.split('.');
    for (var i = 0; i < Math.max(mine.length, theirs.length); i++) {
      var a = parseInt(mine[i], 10) || 0;
      var b = parseInt(theirs[i], 10) || 0;
      if (a !== b) return a < b;
    }
    return false;
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

  function withShareApis(list, shareApis) {
    var apis = (list || []).slice();
    for (var i = 0; i < shareApis.length; i++) {
      if (apis.indexOf(shareApis[i]) < 0) apis.push(shareApis[i]);
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
    var weCom = weComVersion(userAgent);
    var page = withoutFragment(String(window.location.href));
    // WeCom: the current URL on iOS too, the one WeCom's own SDK (@wecom/jssdk) signs there.
    var signed = !weCom && isIosWeChat(userAgent) ? landingUrl : page;
    var request = { url: signed, share: shareFields(options.share) };
    // After a route change on iOS the signed URL is not this page: the card is for this page.
    if (signed !== page) request.page = page;
    if (options.app) request.app = options.app;
    log(options, 'signing', signed);
    return post(endpoint + '/v1/share', request).then(function (answer) {
      if (generation !== latest) throw superseded();
      var context = { options: options, endpoint: endpoint, page: page, userAgent: userAgent, weCom: weCom };
      return configure(wx, answer, context);
    });
  }

  function superseded() {
    return failure('JssdkShare.init: superseded by a later call', { superseded: true });
  }

  // Runs the client's steps for `answer`; only the first outcome counts, and a later init supersedes it.
  function configure(wx, answer, context) {
    var options = context.options;
    return new Promise(function (resolve, reject) {
      var settled = false;
      supersede = function () {
        if (settled) return;
        settled = true;
        reject(superseded());
      };
      var run = {
        live: function () {
          return !settled;
        },
        done: function () {
          if (settled) return;
          settled = true;
          log(options, 'share card set', answer.appMessage);
          resolve(answer);
        },
        // errMsg is the client's; evidence what the failed call was given (appId, signature, nonceStr, timestamp).
        fail: function (errMsg, evidence) {
          if (settled) return;
          settled = true;
          log(options, 'failed', errMsg);
          report(context, evidence, errMsg).then(function (findings) {
            log(options, 'the doctor says', findings);
            reject(failure(errMsg, { errMsg: errMsg, findings: findings }));
          });
        },
        refuse: function (message) {
          if (settled) return;
          settled = true;
          reject(failure(message, {}));
        }
      };
      (context.weCom ? inWeCom : inWeChat)(wx, answer, context, run);
    });
  }

  function configObject(config, options, shareApis, beta) {
    var wxConfig = {
      debug: !!options.debug,
      appId: config.appId,
      timestamp: config.timestamp,
      nonceStr: config.nonceStr,
      signature: config.signature,
      jsApiList: withShareApis(options.jsApiList || config.jsApiList, shareApis)
    };
    // WeCom: its client's JSAPIs that jweixin has no function for need it (wx.invoke, wx.on).
    if (beta) wxConfig.beta = true;
    var openTagList = options.openTagList || config.openTagList;
    if (openTagList && openTagList.length) wxConfig.openTagList = openTagList;
    return wxConfig;
  }

  function inWeChat(wx, answer, context, run) {
    var config = answer.config;
    var pending = SHARE_APIS.length;

    function callbacks(api, payload) {
      var call = copy(payload);
      call.success = function () {
        pending -= 1;
        if (pending === 0) run.done();
      };
      call.fail = function (result) {
        run.fail((result && result.errMsg) || api + ':fail', config);
      };
      return call;
    }

    wx.config(configObject(config, context.options, SHARE_APIS, false));
    wx.ready(function () {
      if (!run.live()) return;
      wx.updateAppMessageShareData(callbacks('updateAppMessageShareData', answer.appMessage));
      wx.updateTimelineShareData(callbacks('updateTimelineShareData', answer.timeline));
    });
    wx.error(function (result) {
      run.fail((result && result.errMsg) || 'config:fail', config);
    });
  }

  // jweixin-1.2.0, the build WeCom documents, has neither wx.agentConfig nor wx.onMenuShareWechat.
  // With beta: true every jweixin has wx.invoke and wx.on, through which WeCom's own builds reach the
  // same client calls ('agentConfig'; the 'menu:share:wechat' event, then 'shareWechat').
  function inWeCom(wx, answer, context, run) {
    var options = context.options;
    var config = answer.config;
    var agent = answer.agentConfig;
    var alone = !versionBefore(context.weCom, WECOM_AGENT_CONFIG_ALONE);
    var configured = false;
    var agentConfigured = !agent;

    function check() {
      if (configured && agentConfigured) run.done();
    }

    function agentConfig() {
      var params = {
        corpid: agent.corpid,
        agentid: agent.agentid,
        timestamp: agent.timestamp,
        nonceStr: agent.nonceStr,
        signature: agent.signature,
        jsApiList: withShareApis(options.jsApiList || agent.jsApiList, WECOM_SHARE_APIS)
      };
      log(options, 'wx.agentConfig', params.agentid);
      whenBridge(function () {
        wx.invoke('agentConfig', params, function (result) {
          var errMsg = clientMessage(result, 'agentConfig');
          if (/:ok$/.test(errMsg)) {
            agentConfigured = true;
            check();
          } else {
            run.fail(errMsg, { appId: agent.corpid, agentId: agent.agentid, signature: agent.signature,
                               nonceStr: agent.nonceStr, timestamp: agent.timestamp });
          }
        });
      });
    }

    function listener(api, payload) {
      var call = copy(payload);
      call.fail = function (result) {
        log(options, api + ' failed', result && result.errMsg);
      };
      return call;
    }

    // jweixin-1.2.0 defines wx.invoke and wx.on once wx.config has been called: check after it.
    wx.config(configObject(config, options, WECOM_SHARE_APIS, true));
    if (typeof wx.invoke !== 'function' || typeof wx.on !== 'function') {
      run.refuse('JssdkShare.init: in WeCom wx needs invoke and on; load jweixin (res.wx.qq.com) first');
      return;
    }
    if (agent && alone) agentConfig();
    wx.ready(function () {
      // jweixin runs ready after a failed config too (after wx.error): nothing more then.
      if (!run.live()) return;
      configured = true;
      wx.onMenuShareAppMessage(listener('onMenuShareAppMessage', answer.appMessage));
      var wechat = answer.wechat || answer.appMessage;
      wx.on('menu:share:wechat', function () {
        wx.invoke('shareWechat', { title: wechat.title, desc: wechat.desc, link: wechat.link, img_url: wechat.imgUrl,
                                   type: 'link', data_url: '' }, function (result) {
          var errMsg = clientMessage(result, 'onMenuShareWechat');
          if (!/:ok$/.test(errMsg)) log(options, 'onMenuShareWechat failed', errMsg);
        });
      });
      wx.onMenuShareTimeline(listener('onMenuShareTimeline', answer.timeline));
      if (agent && !alone) agentConfig();
      check();
    });
    wx.error(function (result) {
      run.fail((result && result.errMsg) || 'config:fail', config);
    });
  }

  // jweixin drops a call made before the client injected its bridge; its own calls wait for this event.
  function whenBridge(callback) {
    var page = window.document;
    if (window.WeixinJSBridge || !page || !page.addEventListener) callback();
    else page.addEventListener('WeixinJSBridgeReady', callback, false);
  }

  // wx.invoke hands over the client's own answer: errMsg, or err_msg as the bridge spells it.
  function clientMessage(result, api) {
    var errMsg = (result && (result.errMsg || result.err_msg)) || '';
    return errMsg.indexOf(':') < 0 ? api + ':' + (errMsg || 'fail') : errMsg;
  }

  function copy(payload) {
    var call = {};
    for (var key in payload) {
      if (Object.prototype.hasOwnProperty.call(payload, key)) call[key] = payload[key];
    }
    return call;
  }

  // What was signed and what WeChat said, for the service's doctor; resolves with its findings.
  function report(context, evidence, errMsg) {
    return post(context.endpoint + '/v1/report', {
      url: context.page,
      landingUrl: landingUrl,
      appId: evidence.appId,
      agentId: evidence.agentId,
      signature: evidence.signature,
      nonceStr: evidence.nonceStr,
      timestamp: evidence.timestamp,
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

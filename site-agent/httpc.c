/*
 * libcurl wrapper for the adapters: one easy handle per request (adapters
 * are not hot paths), JSON in and out, errors mapped to err.h codes.
 * Credentials are kept in owned buffers and wiped when cleared.
 */
#include "site-agent/httpc.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "common/err.h"
#include "common/json.h"

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void wipe_free(char *s)
{
	if (s) {
		sodium_memzero(s, strlen(s));
		free(s);
	}
}

int mer_agent_http_init(struct mer_agent_http *h, const char *url,
			const char *bearer, const char *ca_file, int insecure,
			long timeout_ms)
{
	size_t n;

	memset(h, 0, sizeof(*h));
	pthread_once(&curl_once, curl_init_once);
	if (!url)
		return MER_EINVAL;
	if (strncmp(url, "unix://", 7) == 0) {
		if (url[7] != '/' || strlen(url + 7) >= sizeof(h->unix_path))
			return MER_EINVAL;
		snprintf(h->unix_path, sizeof(h->unix_path), "%s", url + 7);
		snprintf(h->base, sizeof(h->base), "http://localhost");
	} else if (strncmp(url, "http://", 7) == 0 ||
		   strncmp(url, "https://", 8) == 0) {
		if (strlen(url) >= sizeof(h->base))
			return MER_EINVAL;
		snprintf(h->base, sizeof(h->base), "%s", url);
		n = strlen(h->base);
		while (n > 0 && h->base[n - 1] == '/')
			h->base[--n] = '\0';
	} else {
		return MER_EINVAL;
	}
	if (bearer && *bearer && !(h->bearer = strdup(bearer)))
		return MER_ENOMEM;
	if (ca_file)
		snprintf(h->ca_file, sizeof(h->ca_file), "%s", ca_file);
	h->insecure = insecure;
	h->timeout_ms = timeout_ms > 0 ? timeout_ms : 10000;
	return 0;
}

int mer_agent_http_header(struct mer_agent_http *h, const char *name,
			  const char *value)
{
	size_t n = strlen(name) + strlen(value) + 3;
	char *s;

	if (h->nhdr >= sizeof(h->hdr) / sizeof(h->hdr[0]))
		return MER_ETOOBIG;
	if (strpbrk(value, "\r\n") || strpbrk(name, "\r\n:"))
		return MER_EINVAL;
	if (!(s = malloc(n)))
		return MER_ENOMEM;
	snprintf(s, n, "%s: %s", name, value);
	h->hdr[h->nhdr++] = s;
	return 0;
}

void mer_agent_http_clear(struct mer_agent_http *h)
{
	if (!h)
		return;
	wipe_free(h->bearer);
	for (size_t i = 0; i < h->nhdr; i++)
		wipe_free(h->hdr[i]);
	memset(h, 0, sizeof(*h));
}

struct buf {
	char *p;
	size_t n, cap;
	int over;
};

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct buf *b = arg;
	size_t n = size * nmemb;

	if (b->n + n + 1 > MER_AGENT_HTTP_MAX_REPLY) {
		b->over = 1;
		return 0;
	}
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 16384;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *q = realloc(b->p, cap);
		if (!q)
			return 0;
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->n, ptr, n);
	b->n += n;
	b->p[b->n] = '\0';
	return n;
}

int mer_agent_http_do(struct mer_agent_http *h, const char *method,
		      const char *path, const json_t *body,
		      const char *content_type, long *status, json_t **reply,
		      char *err, size_t errlen)
{
	CURL *c = NULL;
	struct curl_slist *hl = NULL, *tmp;
	struct buf b = {0};
	char *text = NULL, *auth = NULL;
	char url[2048], ct[128];
	CURLcode cc;
	int rv = MER_ENOMEM;
	long code = 0;

	if (reply)
		*reply = NULL;
	*status = 0;
	if (snprintf(url, sizeof(url), "%s%s", h->base, path) >=
	    (int)sizeof(url))
		return MER_ETOOBIG;
	if (!(c = curl_easy_init()))
		goto out_wipe_auth;
	if (body && !(text = json_dumps(body, JSON_COMPACT)))
		goto out_wipe_auth;
	snprintf(ct, sizeof(ct), "Content-Type: %s",
		 content_type ? content_type : "application/json");
	if (!(tmp = curl_slist_append(hl, "Accept: application/json")))
		goto out_wipe_auth;
	hl = tmp;
	if (text) {
		if (!(tmp = curl_slist_append(hl, ct)))
			goto out_wipe_auth;
		hl = tmp;
	}
	/* curl waits a second for 100-continue before big bodies. */
	if (!(tmp = curl_slist_append(hl, "Expect:")))
		goto out_wipe_auth;
	hl = tmp;
	if (h->bearer) {
		size_t n = strlen(h->bearer) + 32;
		if (!(auth = malloc(n)))
			goto out_wipe_auth;
		snprintf(auth, n, "Authorization: Bearer %s", h->bearer);
		if (!(tmp = curl_slist_append(hl, auth)))
			goto out_wipe_auth;
		hl = tmp;
	}
	for (size_t i = 0; i < h->nhdr; i++) {
		if (!(tmp = curl_slist_append(hl, h->hdr[i])))
			goto out_wipe_auth;
		hl = tmp;
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, h->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, h->timeout_ms);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (h->unix_path[0])
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, h->unix_path);
	if (h->ca_file[0])
		curl_easy_setopt(c, CURLOPT_CAINFO, h->ca_file);
	if (h->insecure) {
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (text) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(text));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
	}
	cc = curl_easy_perform(c);
	if (cc != CURLE_OK) {
		if (b.over) {
			snprintf(err, errlen, "%s %s: reply over %u bytes",
				 method, path, MER_AGENT_HTTP_MAX_REPLY);
			rv = MER_ETOOBIG;
		} else {
			snprintf(err, errlen, "%s %s: %s", method, path,
				 curl_easy_strerror(cc));
			rv = cc == CURLE_OPERATION_TIMEDOUT ? MER_ETIMEDOUT
							    : MER_EUNREACHABLE;
		}
		goto out_wipe_auth;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	*status = code;
	if (b.n > 0 && reply) {
		struct mer_json_doc doc = {0};
		char perr[256];
		if (mer_json_doc_parse("reply", b.p, b.n,
				       MER_AGENT_HTTP_MAX_REPLY, 0, &doc, perr,
				       sizeof(perr)) == 0) {
			*reply = doc.root;
			doc.root = NULL;
			mer_json_doc_free(&doc);
		} else if (code >= 200 && code < 300) {
			snprintf(err, errlen, "%s %s: malformed reply: %s",
				 method, path, perr);
			rv = MER_EPARSE;
			goto out_wipe_auth;
		}
	}
	if (code < 200 || code >= 300) {
		const char *msg = NULL;
		if (reply && *reply)
			msg = json_string_value(
			    json_object_get(*reply, "message"));
		snprintf(err, errlen, "%s %s: HTTP %ld%s%.200s", method, path,
			 code, msg ? ": " : "", msg ? msg : "");
		rv = MER_EREMOTE;
		goto out_wipe_auth;
	}
	rv = 0;
out_wipe_auth:
	if (auth) {
		sodium_memzero(auth, strlen(auth));
		free(auth);
	}
	curl_slist_free_all(hl);
	if (c)
		curl_easy_cleanup(c);
	free(text);
	free(b.p);
	return rv;
}

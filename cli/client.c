/*
 * The REST client behind meridianctl (see client.h). Kept to what a command
 * line needs: synchronous requests on one handle, bounded answers, TLS
 * through libcurl/OpenSSL with a CA file. Retries are the callers' choice.
 */
#include "cli/client.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "common/err.h"

static int copy_str(char *dst, size_t n, const char *src)
{
	size_t len = src ? strlen(src) : 0;

	if (len >= n)
		return MER_ETOOBIG;
	memcpy(dst, src ? src : "", len);
	dst[len] = 0;
	return 0;
}

int mer_ctl_client_init(struct mer_ctl_client *c, const char *base,
			const char *token, const char *ca_file, long timeout_ms,
			char *err, size_t errlen)
{
	size_t len;

	memset(c, 0, sizeof(*c));
	if (!base || (strncmp(base, "http://", 7) != 0 &&
		      strncmp(base, "https://", 8) != 0)) {
		snprintf(err, errlen,
			 "broker URL must start with http:// or https:// "
			 "(got \"%s\")",
			 base ? base : "");
		return MER_EINVAL;
	}
	if (copy_str(c->base, sizeof(c->base), base)) {
		snprintf(err, errlen, "broker URL too long");
		return MER_EINVAL;
	}
	len = strlen(c->base);
	while (len > 0 && c->base[len - 1] == '/')
		c->base[--len] = 0;
	if (copy_str(c->token, sizeof(c->token), token)) {
		snprintf(err, errlen, "token too long (over %d bytes)",
			 MER_CTL_TOKEN_MAX - 1);
		return MER_EINVAL;
	}
	/* A token with a line break would end the header and start another:
	 * refuse it rather than send it. */
	for (const char *p = c->token; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f) {
			sodium_memzero(c->token, sizeof(c->token));
			snprintf(err, errlen, "token holds control characters");
			return MER_EINVAL;
		}
	if (copy_str(c->ca_file, sizeof(c->ca_file), ca_file)) {
		sodium_memzero(c->token, sizeof(c->token));
		snprintf(err, errlen, "CA file path too long");
		return MER_EINVAL;
	}
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
	c->curl = curl_easy_init();
	if (!c->curl) {
		sodium_memzero(c->token, sizeof(c->token));
		snprintf(err, errlen, "cannot start libcurl");
		return MER_ENOMEM;
	}
	return 0;
}

void mer_ctl_client_close(struct mer_ctl_client *c)
{
	if (!c)
		return;
	sodium_memzero(c->token, sizeof(c->token));
	if (c->curl)
		curl_easy_cleanup(c->curl);
	c->curl = NULL;
}

struct sink {
	struct mer_ctl_answer *a;
	int too_big;
};

static size_t on_body(char *p, size_t sz, size_t nm, void *arg)
{
	struct sink *s = arg;
	struct mer_ctl_answer *a = s->a;
	size_t n = sz * nm;
	char *nb;

	if (a->len + n > MER_CTL_MAX_ANSWER) {
		s->too_big = 1;
		return 0;
	}
	nb = realloc(a->body, a->len + n + 1);
	if (!nb)
		return 0;
	memcpy(nb + a->len, p, n);
	a->len += n;
	nb[a->len] = 0;
	a->body = nb;
	return n;
}

static int curl_err(CURLcode cc)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
		return MER_ETIMEDOUT;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_ENGINE_INITFAILED:
		return MER_ECRYPTO;
	case CURLE_OUT_OF_MEMORY:
		return MER_ENOMEM;
	default:
		return MER_EUNREACHABLE;
	}
}

int mer_ctl_request(struct mer_ctl_client *c, const char *method,
		    const char *path, const char *body, size_t body_len,
		    const char *idem_key, struct mer_ctl_answer *a, char *err,
		    size_t errlen)
{
	CURL *h = c->curl;
	struct curl_slist *hdrs = NULL, *nh;
	struct sink sink = {a, 0};
	char url[2048], line[MER_CTL_TOKEN_MAX + 32], cerr[CURL_ERROR_SIZE];
	CURLcode cc;
	int rv = 0;

	memset(a, 0, sizeof(*a));
	cerr[0] = 0;
	if ((size_t)snprintf(url, sizeof(url), "%s%s", c->base, path) >=
	    sizeof(url)) {
		snprintf(err, errlen, "request URL too long");
		return MER_EINVAL;
	}
	curl_easy_reset(h);
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 c->timeout_ms < 10000 ? c->timeout_ms : 10000L);
	curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
	/* curl follows nothing itself: the one redirect a broker sends
	 * (307 from a follower) is handled below. */
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_USERAGENT, "meridianctl/1");
	if (c->ca_file[0])
		curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
	nh = curl_slist_append(hdrs, "Accept: application/json");
	if (!nh)
		goto out_nomem;
	hdrs = nh;
	if (body) {
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)body_len);
		if (!(nh = curl_slist_append(hdrs,
					     "Content-Type: application/json")))
			goto out_nomem;
		hdrs = nh;
		if (!(nh = curl_slist_append(hdrs, "Expect:")))
			goto out_nomem;
		hdrs = nh;
	}
	if (c->token[0]) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s",
			 c->token);
		nh = curl_slist_append(hdrs, line);
		sodium_memzero(line, sizeof(line));
		if (!nh)
			goto out_nomem;
		hdrs = nh;
	}
	if (idem_key) {
		snprintf(line, sizeof(line), "Idempotency-Key: %s", idem_key);
		if (!(nh = curl_slist_append(hdrs, line)))
			goto out_nomem;
		hdrs = nh;
	}
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	cc = curl_easy_perform(h);
	/* A follower broker answers writes with 307 to the leader
	 * (docs/api.yaml): repeated there once, same method, body and
	 * headers. Only http(s) URLs, and only one hop: the token goes to
	 * the broker the follower names, never further. */
	if (cc == CURLE_OK) {
		char *loc = NULL;
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->status);
		curl_easy_getinfo(h, CURLINFO_REDIRECT_URL, &loc);
		if (a->status == 307 && loc &&
		    (strncmp(loc, "http://", 7) == 0 ||
		     strncmp(loc, "https://", 8) == 0) &&
		    strlen(loc) < sizeof(url)) {
			snprintf(url, sizeof(url), "%s", loc);
			mer_ctl_answer_clear(a);
			curl_easy_setopt(h, CURLOPT_URL, url);
			cc = curl_easy_perform(h);
		}
	}
	if (cc != CURLE_OK) {
		rv = sink.too_big ? MER_ETOOBIG : curl_err(cc);
		if (sink.too_big)
			snprintf(err, errlen, "answer over %u bytes",
				 MER_CTL_MAX_ANSWER);
		else
			snprintf(err, errlen, "%s: %s", c->base,
				 cerr[0] ? cerr : curl_easy_strerror(cc));
		mer_ctl_answer_clear(a);
		goto out;
	}
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &a->status);
	if (a->body)
		a->json = json_loadb(a->body, a->len, 0, NULL);
	goto out;
out_nomem:
	rv = MER_ENOMEM;
	snprintf(err, errlen, "out of memory");
out:
	/* The header list holds the token: wipe it before it is freed. */
	for (struct curl_slist *p = hdrs; p; p = p->next)
		if (strncmp(p->data, "Authorization:", 14) == 0)
			sodium_memzero(p->data, strlen(p->data));
	curl_slist_free_all(hdrs);
	return rv;
}

void mer_ctl_answer_clear(struct mer_ctl_answer *a)
{
	if (!a)
		return;
	free(a->body);
	json_decref(a->json);
	memset(a, 0, sizeof(*a));
}

int mer_ctl_escape(const char *s, char *out, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t k = 0;

	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' ||
		    ch == '~') {
			if (k + 1 >= n)
				return MER_ETOOBIG;
			out[k++] = (char)ch;
		} else {
			if (k + 3 >= n)
				return MER_ETOOBIG;
			out[k++] = '%';
			out[k++] = hex[ch >> 4];
			out[k++] = hex[ch & 15];
		}
	}
	if (k >= n)
		return MER_ETOOBIG;
	out[k] = 0;
	return 0;
}

void mer_ctl_answer_error(const struct mer_ctl_answer *a, char *out, size_t n)
{
	const char *code = json_string_value(json_object_get(a->json, "error"));
	const char *msg =
	    json_string_value(json_object_get(a->json, "message"));

	if (msg && code)
		snprintf(out, n, "%s (%ld %s)", msg, a->status, code);
	else if (msg)
		snprintf(out, n, "%s (%ld)", msg, a->status);
	else {
		/* Not the API's error object (a proxy's page, say): show the
		 * start of its first line only. */
		size_t k = a->body ? strcspn(a->body, "\r\n") : 0;
		snprintf(out, n, "the broker answered %ld%s%.*s", a->status,
			 k ? ": " : "", (int)(k > 160 ? 160 : k),
			 a->body ? a->body : "");
	}
}

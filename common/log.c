/*
 * logfmt writer for every Meridian program. Not a log shipper: it formats one
 * line and writes it with a single call so lines from threads never mix.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "token.h"

#define LINE_MAX_LEN 8192

static _Atomic int log_level = MER_LOG_INFO;
static FILE *_Atomic log_out;
static const char *_Atomic log_comp;

void mer_log_set_level(enum mer_log_level level)
{
	atomic_store(&log_level, (int)level);
}

enum mer_log_level mer_log_get_level(void)
{
	return (enum mer_log_level)atomic_load(&log_level);
}

int mer_log_level_parse(const char *s, enum mer_log_level *out)
{
	static const char *names[] = {"debug", "info", "warn", "error"};

	for (size_t i = 0; s && i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum mer_log_level)i;
			return 0;
		}
	}
	return 2; /* MER_EINVAL; err.h is not needed for one constant */
}

void mer_log_set_output(FILE *f)
{
	atomic_store(&log_out, f);
}

void mer_log_set_component(const char *name)
{
	atomic_store(&log_comp, name);
}

int mer_log_key_is_secret(const char *key, size_t len)
{
	static const char *exact[] = {"token",         "secret",
				      "password",      "passwd",
				      "authorization", "private_key",
				      "key_material",  "bearer"};
	static const char *suffix[] = {"_token", "_secret", "_password"};

	for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
		if (strlen(exact[i]) == len && memcmp(exact[i], key, len) == 0)
			return 1;
	for (size_t i = 0; i < sizeof(suffix) / sizeof(suffix[0]); i++) {
		size_t sl = strlen(suffix[i]);
		if (len >= sl && memcmp(key + len - sl, suffix[i], sl) == 0)
			return 1;
	}
	return 0;
}

void mer_redact_token(const char *token, char *out, size_t n)
{
	const char *dot = token ? strchr(token, '.') : NULL;
	char id[MER_TOKEN_ID_LEN + 1];

	if (n == 0)
		return;
	/* Show the prefix only when it is a well-formed token id: anything
	 * else may be a secret pasted in the wrong place. */
	if (!dot || dot - token != MER_TOKEN_ID_LEN) {
		snprintf(out, n, "[redacted]");
		return;
	}
	memcpy(id, token, MER_TOKEN_ID_LEN);
	id[MER_TOKEN_ID_LEN] = '\0';
	if (!mer_token_id_valid(id))
		snprintf(out, n, "[redacted]");
	else
		snprintf(out, n, "%s.[redacted]", id);
}

struct line {
	char buf[LINE_MAX_LEN];
	size_t len;
};

static void put(struct line *l, const char *s, size_t n)
{
	if (l->len >= sizeof(l->buf) - 1)
		return;
	if (n > sizeof(l->buf) - 1 - l->len)
		n = sizeof(l->buf) - 1 - l->len;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
}

static void puts_raw(struct line *l, const char *s)
{
	put(l, s, strlen(s));
}

/* logfmt value: bare when it is a plain word, otherwise quoted with \" \\ \n
 * \t and \xNN escapes so one event always stays on one line. */
static void put_value(struct line *l, const char *v)
{
	int quote = (*v == '\0');

	for (const unsigned char *p = (const unsigned char *)v; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' ||
		    *p >= 0x7f)
			quote = 1;
	if (!quote) {
		puts_raw(l, v);
		return;
	}
	put(l, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		char esc[8];
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			put(l, esc, 2);
		} else if (*p == '\n') {
			put(l, "\\n", 2);
		} else if (*p == '\t') {
			put(l, "\\t", 2);
		} else if (*p < ' ' || *p == 0x7f) {
			snprintf(esc, sizeof(esc), "\\x%02x", *p);
			puts_raw(l, esc);
		} else {
			put(l, (const char *)p, 1);
		}
	}
	put(l, "\"", 1);
}

/*
 * Formats one printf conversion starting at *fmtp ('%' already consumed) into
 * out, consuming its argument. Returns 0, or -1 for a conversion this logger
 * does not take (then the rest of the line is dropped, since the va_list
 * position is unknown).
 */
static int format_one(const char **fmtp, va_list *ap, char *out, size_t n)
{
	char spec[32] = "%";
	size_t sl = 1;
	const char *f = *fmtp;
	int lng = 0, size_z = 0, hh = 0;

	while (*f && strchr("-+ #0123456789.", *f) && sl < sizeof(spec) - 4)
		spec[sl++] = *f++;
	for (;;) {
		if (*f == 'l') {
			lng++;
		} else if (*f == 'z') {
			size_z = 1;
		} else if (*f == 'h') {
			hh++;
		} else {
			break;
		}
		if (sl < sizeof(spec) - 4)
			spec[sl++] = *f;
		f++;
	}
	char conv = *f;
	if (!conv)
		return -1;
	spec[sl++] = conv;
	spec[sl] = '\0';
	*fmtp = f + 1;

	switch (conv) {
	case 'd':
	case 'i':
		if (size_z)
			snprintf(out, n, spec, va_arg(*ap, ssize_t));
		else if (lng >= 2)
			snprintf(out, n, spec, va_arg(*ap, long long));
		else if (lng == 1)
			snprintf(out, n, spec, va_arg(*ap, long));
		else
			snprintf(out, n, spec, va_arg(*ap, int));
		return 0;
	case 'u':
	case 'x':
	case 'X':
	case 'o':
		if (size_z)
			snprintf(out, n, spec, va_arg(*ap, size_t));
		else if (lng >= 2)
			snprintf(out, n, spec, va_arg(*ap, unsigned long long));
		else if (lng == 1)
			snprintf(out, n, spec, va_arg(*ap, unsigned long));
		else
			snprintf(out, n, spec, va_arg(*ap, unsigned int));
		return 0;
	case 'f':
	case 'g':
	case 'e':
		snprintf(out, n, spec, va_arg(*ap, double));
		return 0;
	case 'c':
		snprintf(out, n, "%c", (char)va_arg(*ap, int));
		return 0;
	case 's': {
		const char *s = va_arg(*ap, const char *);
		snprintf(out, n, spec, s ? s : "(null)");
		return 0;
	}
	case 'p':
		snprintf(out, n, "%p", va_arg(*ap, void *));
		return 0;
	case '%':
		snprintf(out, n, "%%");
		return 0;
	}
	(void)hh;
	return -1;
}

static void format_pairs(struct line *l, const char *fmt, va_list *ap)
{
	const char *p = fmt;

	while (*p) {
		while (*p == ' ')
			p++;
		if (!*p)
			break;
		const char *key = p;
		while (*p && *p != '=' && *p != ' ')
			p++;
		size_t klen = (size_t)(p - key);
		if (*p != '=') { /* a bare word: keep it as a flag key */
			put(l, " ", 1);
			put(l, key, klen);
			continue;
		}
		p++;
		/* The value runs to the next space; it may mix literal text and
		 * conversions ("%s/%s"). */
		char val[2048];
		size_t vl = 0;
		val[0] = '\0';
		while (*p && *p != ' ') {
			if (*p == '%') {
				char one[1024];
				p++;
				if (format_one(&p, ap, one, sizeof(one)) != 0)
					return;
				size_t ol = strlen(one);
				if (ol > sizeof(val) - 1 - vl)
					ol = sizeof(val) - 1 - vl;
				memcpy(val + vl, one, ol);
				vl += ol;
			} else {
				if (vl < sizeof(val) - 1)
					val[vl++] = *p;
				p++;
			}
			val[vl] = '\0';
		}
		put(l, " ", 1);
		put(l, key, klen);
		put(l, "=", 1);
		if (mer_log_key_is_secret(key, klen))
			puts_raw(l, "[redacted]");
		else
			put_value(l, val);
	}
}

void mer_log(enum mer_log_level level, const char *msg, const char *fmt, ...)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	struct line l;
	struct timespec ts;
	struct tm tm;
	char tbuf[64];
	va_list ap;

	if ((int)level < atomic_load(&log_level))
		return;
	if ((int)level < 0 || (int)level > MER_LOG_ERROR)
		level = MER_LOG_ERROR;

	l.len = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
	puts_raw(&l, "ts=");
	puts_raw(&l, tbuf);
	snprintf(tbuf, sizeof(tbuf), ".%03ldZ level=", ts.tv_nsec / 1000000);
	puts_raw(&l, tbuf);
	puts_raw(&l, names[level]);
	const char *comp = atomic_load(&log_comp);
	if (comp) {
		puts_raw(&l, " comp=");
		put_value(&l, comp);
	}
	puts_raw(&l, " msg=");
	put_value(&l, msg ? msg : "");
	if (fmt) {
		va_start(ap, fmt);
		format_pairs(&l, fmt, &ap);
		va_end(ap);
	}
	if (l.len >= sizeof(l.buf) - 1) { /* truncated: say so, keep one line */
		l.len = sizeof(l.buf) - 5;
		memcpy(l.buf + l.len, "...", 3);
		l.len += 3;
	}
	l.buf[l.len++] = '\n';

	FILE *out = atomic_load(&log_out);
	if (!out)
		out = stderr;
	fwrite(l.buf, 1, l.len, out);
	fflush(out);
}

/*
 * JSON documents with limits and positions: parsing and loading over jansson
 * with size and depth limits, and a small scanner that maps a value's path
 * back to its line and column in the source text. Not a JSON parser of its
 * own: the scanner only walks text that jansson has already accepted.
 */
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"

/* Appends to err at *off without ever overrunning errlen. */
static void err_vappend(char *err, size_t errlen, size_t *off, const char *fmt,
			va_list ap)
{
	int n;

	if (!err || errlen == 0 || *off >= errlen - 1)
		return;
	n = vsnprintf(err + *off, errlen - *off, fmt, ap);
	if (n < 0)
		return;
	*off += (size_t)n < errlen - *off ? (size_t)n : errlen - 1 - *off;
}

static void err_append(char *err, size_t errlen, size_t *off, const char *fmt,
		       ...) __attribute__((format(printf, 4, 5)));

static void err_append(char *err, size_t errlen, size_t *off, const char *fmt,
		       ...)
{
	va_list ap;

	va_start(ap, fmt);
	err_vappend(err, errlen, off, fmt, ap);
	va_end(ap);
}

static const char *doc_label(const char *name)
{
	return name && *name ? name : "(input)";
}

/* ---- source positions ------------------------------------------------ */

/*
 * A cursor over source text that knows its line and column. Columns count
 * characters (UTF-8 lead bytes), as jansson's do, so positions from both
 * agree and match what an editor shows.
 */
struct scan {
	const char *s;
	size_t len;
	size_t i;
	int line;
	int col;
};

static void scan_init(struct scan *sc, const char *s, size_t len)
{
	sc->s = s;
	sc->len = s ? len : 0;
	sc->i = 0;
	sc->line = 1;
	sc->col = 1;
}

static int scan_peek(const struct scan *sc)
{
	return sc->i < sc->len ? (unsigned char)sc->s[sc->i] : -1;
}

static void scan_adv(struct scan *sc)
{
	unsigned char c;

	if (sc->i >= sc->len)
		return;
	c = (unsigned char)sc->s[sc->i++];
	if (c == '\n') {
		sc->line++;
		sc->col = 1;
	} else if ((c & 0xC0) != 0x80) {
		sc->col++;
	}
}

static void scan_ws(struct scan *sc)
{
	for (;;) {
		int c = scan_peek(sc);
		if (c != ' ' && c != '\t' && c != '\r' && c != '\n')
			return;
		scan_adv(sc);
	}
}

/* ---- limits ---------------------------------------------------------- */

/*
 * Counts bracket nesting outside strings and stops at the first bracket past
 * max_depth. Runs before jansson so that a "[[[[..." bomb is refused in
 * linear time instead of being recursed into.
 */
static int prescan_depth(const char *s, size_t len, size_t max_depth, int *line,
			 int *col)
{
	struct scan sc;
	size_t depth = 0;
	int in_str = 0;

	scan_init(&sc, s, len);
	while (sc.i < sc.len) {
		int c = scan_peek(&sc);
		if (in_str) {
			if (c == '\\')
				scan_adv(&sc);
			else if (c == '"')
				in_str = 0;
		} else if (c == '"') {
			in_str = 1;
		} else if (c == '[' || c == '{') {
			if (++depth > max_depth) {
				*line = sc.line;
				*col = sc.col;
				return MER_ETOOBIG;
			}
		} else if ((c == ']' || c == '}') && depth > 0) {
			depth--;
		}
		scan_adv(&sc);
	}
	return 0;
}

/* Takes ownership of buf (len bytes plus a NUL) in every case. */
static int parse_owned(const char *name, char *buf, size_t len,
		       size_t max_bytes, size_t max_depth,
		       struct mer_json_doc *doc, char *err, size_t errlen)
{
	const char *label = doc_label(name);
	json_error_t jerr;
	size_t off = 0;
	int line = 0, col = 0, rv;

	memset(doc, 0, sizeof(*doc));
	if (err && errlen)
		err[0] = '\0';
	if (len > max_bytes) {
		err_append(err, errlen, &off,
			   "%s: document is %zu bytes, over the limit of %zu "
			   "bytes",
			   label, len, max_bytes);
		rv = MER_ETOOBIG;
		goto out_free_buf;
	}
	if (prescan_depth(buf, len, max_depth, &line, &col) != 0) {
		err_append(err, errlen, &off,
			   "%s:%d:%d: nested deeper than %zu levels", label,
			   line, col, max_depth);
		rv = MER_ETOOBIG;
		goto out_free_buf;
	}
	/* Duplicate keys are refused: which one wins is not something a
	 * config or API author should have to know. */
	doc->root = json_loadb(buf, len,
			       JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
	if (!doc->root) {
		if (jerr.line > 0)
			err_append(err, errlen, &off, "%s:%d:%d: %s", label,
				   jerr.line, jerr.column > 0 ? jerr.column : 1,
				   jerr.text);
		else
			err_append(err, errlen, &off, "%s: %s", label,
				   jerr.text);
		rv = MER_EPARSE;
		goto out_free_buf;
	}
	doc->name = strdup(label);
	if (!doc->name) {
		err_append(err, errlen, &off, "%s: out of memory", label);
		rv = MER_ENOMEM;
		goto out_put_root;
	}
	doc->text = buf;
	doc->len = len;
	return 0;

out_put_root:
	json_decref(doc->root);
	doc->root = NULL;
out_free_buf:
	free(buf);
	return rv;
}

int mer_json_doc_parse(const char *name, const char *text, size_t len,
		       size_t max_bytes, size_t max_depth,
		       struct mer_json_doc *doc, char *err, size_t errlen)
{
	char *buf;
	size_t off = 0;

	if (max_bytes == 0)
		max_bytes = MER_JSON_MAX_BYTES;
	if (max_depth == 0)
		max_depth = MER_JSON_MAX_DEPTH;
	memset(doc, 0, sizeof(*doc));
	if (!text)
		len = 0;
	if (len > max_bytes) {
		/* Refuse before copying: the copy is what a big body costs. */
		return parse_owned(name, NULL, len, max_bytes, max_depth, doc,
				   err, errlen);
	}
	buf = malloc(len + 1);
	if (!buf) {
		err_append(err, errlen, &off, "%s: out of memory",
			   doc_label(name));
		return MER_ENOMEM;
	}
	if (len)
		memcpy(buf, text, len);
	buf[len] = '\0';
	return parse_owned(name, buf, len, max_bytes, max_depth, doc, err,
			   errlen);
}

int mer_json_doc_load(const char *path, size_t max_bytes, size_t max_depth,
		      struct mer_json_doc *doc, char *err, size_t errlen)
{
	const char *label = doc_label(path);
	struct stat st;
	char *buf = NULL;
	size_t cap, len = 0, off = 0;
	int fd, rv;

	if (max_bytes == 0)
		max_bytes = MER_JSON_MAX_BYTES;
	if (max_depth == 0)
		max_depth = MER_JSON_MAX_DEPTH;
	memset(doc, 0, sizeof(*doc));
	if (err && errlen)
		err[0] = '\0';
	fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
	if (fd < 0) {
		err_append(err, errlen, &off, "%s: %s", label,
			   path ? strerror(errno) : "no file name");
		return MER_EIO;
	}
	if (fstat(fd, &st) != 0) {
		err_append(err, errlen, &off, "%s: %s", label, strerror(errno));
		rv = MER_EIO;
		goto out_close;
	}
	if (S_ISDIR(st.st_mode)) {
		err_append(err, errlen, &off, "%s: is a directory", label);
		rv = MER_EIO;
		goto out_close;
	}
	/* The size check comes before any read, so a huge file costs
	 * nothing; the read below still stops at max_bytes + 1 for files
	 * that grow or have no size (pipes). */
	if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size > max_bytes) {
		err_append(err, errlen, &off,
			   "%s: file is %jd bytes, over the limit of %zu bytes",
			   label, (intmax_t)st.st_size, max_bytes);
		rv = MER_ETOOBIG;
		goto out_close;
	}
	cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 4096;
	if (cap > max_bytes + 1)
		cap = max_bytes + 1;
	buf = malloc(cap + 1);
	if (!buf) {
		rv = MER_ENOMEM;
		err_append(err, errlen, &off, "%s: out of memory", label);
		goto out_close;
	}
	for (;;) {
		ssize_t n;
		if (len == cap) {
			size_t ncap = cap * 2;
			char *nbuf;
			if (cap > max_bytes)
				break;
			if (ncap > max_bytes + 1)
				ncap = max_bytes + 1;
			nbuf = realloc(buf, ncap + 1);
			if (!nbuf) {
				rv = MER_ENOMEM;
				err_append(err, errlen, &off,
					   "%s: out of memory", label);
				goto out_free_buf;
			}
			buf = nbuf;
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rv = MER_EIO;
			err_append(err, errlen, &off, "%s: %s", label,
				   strerror(errno));
			goto out_free_buf;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (len > max_bytes) {
		free(buf);
		err_append(err, errlen, &off,
			   "%s: file is over the limit of %zu bytes", label,
			   max_bytes);
		return MER_ETOOBIG;
	}
	buf[len] = '\0';
	return parse_owned(path, buf, len, max_bytes, max_depth, doc, err,
			   errlen);

out_free_buf:
	free(buf);
out_close:
	close(fd);
	return rv;
}

void mer_json_doc_free(struct mer_json_doc *doc)
{
	if (!doc)
		return;
	json_decref(doc->root);
	free(doc->text);
	free(doc->name);
	memset(doc, 0, sizeof(*doc));
}

/* ---- locating a path in the text ------------------------------------- */

/*
 * One step of a path. Names are decoded into a buffer the caller owns (as
 * long as the path, which a decoded name can never exceed).
 */
struct seg {
	int is_index;
	size_t index;
	char *name;
	size_t name_len;
};

/*
 * Reads the next segment at *pp into sg. Returns 1 for a segment, 0 at the
 * end of the path and -1 for a malformed path.
 */
static int next_seg(const char **pp, int first, struct seg *sg, char *buf)
{
	const char *p = *pp;
	size_t n = 0;

	if (*p == '\0')
		return 0;
	if (!first && *p == '.') {
		p++;
		if (*p == '\0')
			return -1;
	} else if (!first && *p != '[') {
		return -1;
	}
	if (*p == '[') {
		p++;
		if (*p == '"') {
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && p[1])
					p++;
				buf[n++] = *p;
			}
			if (*p != '"' || p[1] != ']')
				return -1;
			p += 2;
			buf[n] = '\0';
			sg->is_index = 0;
			sg->name = buf;
			sg->name_len = n;
		} else {
			size_t idx = 0;
			if (*p < '0' || *p > '9')
				return -1;
			for (; *p >= '0' && *p <= '9'; p++) {
				if (idx > (SIZE_MAX - 9) / 10)
					return -1;
				idx = idx * 10 + (size_t)(*p - '0');
			}
			if (*p != ']')
				return -1;
			p++;
			sg->is_index = 1;
			sg->index = idx;
		}
	} else {
		for (; *p && *p != '.' && *p != '['; p++)
			buf[n++] = *p;
		if (n == 0)
			return -1;
		buf[n] = '\0';
		sg->is_index = 0;
		sg->name = buf;
		sg->name_len = n;
	}
	*pp = p;
	return 1;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int scan_hex4(struct scan *sc, unsigned *out)
{
	unsigned v = 0;

	for (int k = 0; k < 4; k++) {
		int h = hexval(scan_peek(sc));
		if (h < 0)
			return -1;
		v = v << 4 | (unsigned)h;
		scan_adv(sc);
	}
	*out = v;
	return 0;
}

static size_t utf8_encode(unsigned cp, unsigned char *o)
{
	if (cp < 0x80) {
		o[0] = (unsigned char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (unsigned char)(0xC0 | cp >> 6);
		o[1] = (unsigned char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (unsigned char)(0xE0 | cp >> 12);
		o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
		o[2] = (unsigned char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (unsigned char)(0xF0 | cp >> 18);
	o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
	o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
	o[3] = (unsigned char)(0x80 | (cp & 0x3F));
	return 4;
}

/*
 * Consumes a string at the cursor, decoding escapes as it goes and
 * comparing with want (when not NULL) without a buffer. *eq is set to
 * whether the decoded string equals want. Returns -1 on malformed text.
 */
static int scan_string(struct scan *sc, const char *want, size_t want_len,
		       int *eq)
{
	size_t k = 0;
	int same = 1;

	if (scan_peek(sc) != '"')
		return -1;
	scan_adv(sc);
	for (;;) {
		unsigned char piece[4];
		size_t pn;
		int c = scan_peek(sc);

		if (c < 0)
			return -1;
		scan_adv(sc);
		if (c == '"')
			break;
		if (c != '\\') {
			piece[0] = (unsigned char)c;
			pn = 1;
		} else {
			unsigned cp;
			c = scan_peek(sc);
			scan_adv(sc);
			switch (c) {
			case '"':
			case '\\':
			case '/':
				cp = (unsigned)c;
				break;
			case 'b':
				cp = '\b';
				break;
			case 'f':
				cp = '\f';
				break;
			case 'n':
				cp = '\n';
				break;
			case 'r':
				cp = '\r';
				break;
			case 't':
				cp = '\t';
				break;
			case 'u':
				if (scan_hex4(sc, &cp) != 0)
					return -1;
				if (cp >= 0xD800 && cp < 0xDC00 &&
				    scan_peek(sc) == '\\' &&
				    sc->i + 1 < sc->len &&
				    sc->s[sc->i + 1] == 'u') {
					unsigned lo;
					scan_adv(sc);
					scan_adv(sc);
					if (scan_hex4(sc, &lo) != 0)
						return -1;
					if (lo >= 0xDC00 && lo < 0xE000)
						cp = 0x10000 +
						     ((cp - 0xD800) << 10) +
						     (lo - 0xDC00);
				}
				break;
			default:
				return -1;
			}
			pn = utf8_encode(cp, piece);
		}
		if (want && same) {
			if (k + pn > want_len || memcmp(want + k, piece, pn))
				same = 0;
			else
				k += pn;
		}
	}
	if (eq)
		*eq = want && same && k == want_len;
	return 0;
}

/* Consumes one value of any kind. Containers are skipped by counting
 * brackets (strings aside), so skipping never recurses. */
static int scan_skip_value(struct scan *sc)
{
	int c = scan_peek(sc);
	size_t depth = 0;

	if (c == '"')
		return scan_string(sc, NULL, 0, NULL);
	if (c != '[' && c != '{') {
		size_t start = sc->i;
		while ((c = scan_peek(sc)) >= 0 && c != ',' && c != ']' &&
		       c != '}' && c != ' ' && c != '\t' && c != '\r' &&
		       c != '\n' && c != ':')
			scan_adv(sc);
		return sc->i > start ? 0 : -1;
	}
	for (;;) {
		c = scan_peek(sc);
		if (c < 0)
			return -1;
		if (c == '"') {
			if (scan_string(sc, NULL, 0, NULL) != 0)
				return -1;
			continue;
		}
		if (c == '[' || c == '{')
			depth++;
		else if ((c == ']' || c == '}') && --depth == 0) {
			scan_adv(sc);
			return 0;
		}
		scan_adv(sc);
	}
}

/*
 * Moves the cursor from an object's '{' to the value of member name.
 * key_line and key_col get the position of the member's key. Returns 0, or
 * MER_ENOTFOUND with the cursor left undefined.
 */
static int scan_member(struct scan *sc, const struct seg *sg, int *key_line,
		       int *key_col)
{
	if (scan_peek(sc) != '{')
		return MER_ENOTFOUND;
	scan_adv(sc);
	scan_ws(sc);
	if (scan_peek(sc) == '}')
		return MER_ENOTFOUND;
	for (;;) {
		int eq = 0, kl = sc->line, kc = sc->col;
		if (scan_string(sc, sg->name, sg->name_len, &eq) != 0)
			return MER_ENOTFOUND;
		scan_ws(sc);
		if (scan_peek(sc) != ':')
			return MER_ENOTFOUND;
		scan_adv(sc);
		scan_ws(sc);
		if (eq) {
			*key_line = kl;
			*key_col = kc;
			return 0;
		}
		if (scan_skip_value(sc) != 0)
			return MER_ENOTFOUND;
		scan_ws(sc);
		if (scan_peek(sc) != ',')
			return MER_ENOTFOUND;
		scan_adv(sc);
		scan_ws(sc);
	}
}

static int scan_element(struct scan *sc, size_t index)
{
	if (scan_peek(sc) != '[')
		return MER_ENOTFOUND;
	scan_adv(sc);
	scan_ws(sc);
	if (scan_peek(sc) == ']')
		return MER_ENOTFOUND;
	for (size_t k = 0; k < index; k++) {
		if (scan_skip_value(sc) != 0)
			return MER_ENOTFOUND;
		scan_ws(sc);
		if (scan_peek(sc) != ',')
			return MER_ENOTFOUND;
		scan_adv(sc);
		scan_ws(sc);
	}
	return scan_peek(sc) == ']' || scan_peek(sc) < 0 ? MER_ENOTFOUND : 0;
}

static int locate(const char *text, size_t len, const char *path, int want_key,
		  int *line, int *col)
{
	struct scan sc;
	struct seg sg;
	char *buf;
	const char *p = path ? path : "";
	int first = 1, r, rv = 0, kl = 0, kc = 0;

	*line = 1;
	*col = 1;
	buf = malloc(strlen(p) + 1);
	if (!buf)
		return MER_ENOMEM;
	/* A malformed path is the caller's bug: say so whatever the text. */
	for (const char *q = p; (r = next_seg(&q, first, &sg, buf)) == 1;)
		first = 0;
	if (r < 0) {
		rv = MER_EINVAL;
		goto out_free;
	}
	first = 1;
	scan_init(&sc, text, len);
	scan_ws(&sc);
	if (sc.i >= sc.len) {
		rv = *p ? MER_ENOTFOUND : 0;
		goto out_free;
	}
	*line = sc.line;
	*col = sc.col;
	while (next_seg(&p, first, &sg, buf) == 1) {
		first = 0;
		if (sg.is_index) {
			rv = scan_element(&sc, sg.index);
			kl = sc.line;
			kc = sc.col;
		} else {
			rv = scan_member(&sc, &sg, &kl, &kc);
		}
		if (rv != 0)
			goto out_free;
		*line = sc.line;
		*col = sc.col;
	}
	if (want_key && !first) {
		*line = kl;
		*col = kc;
	}
out_free:
	free(buf);
	return rv;
}

int mer_json_locate(const char *text, size_t len, const char *path, int *line,
		    int *col)
{
	return locate(text, len, path, 0, line, col);
}

int mer_json_locate_key(const char *text, size_t len, const char *path,
			int *line, int *col)
{
	return locate(text, len, path, 1, line, col);
}

size_t mer_json_path_append(char *path, size_t n, const char *key)
{
	size_t off = strlen(path);
	int plain = *key != '\0';

	for (const char *k = key; *k; k++)
		if (*k == '.' || *k == '[' || *k == ']' || *k == '"' ||
		    *k == '\\')
			plain = 0;
	if (plain) {
		err_append(path, n, &off, "%s%s", off ? "." : "", key);
		return off;
	}
	err_append(path, n, &off, "[\"");
	for (const char *k = key; *k; k++) {
		if (*k == '"' || *k == '\\')
			err_append(path, n, &off, "\\");
		err_append(path, n, &off, "%c", *k);
	}
	err_append(path, n, &off, "\"]");
	return off;
}

static void vdoc_err(const struct mer_json_doc *doc, const char *path,
		     int at_key, char *err, size_t errlen, const char *fmt,
		     va_list ap)
{
	const char *label = doc_label(doc ? doc->name : NULL);
	size_t off = 0;
	int line, col, have = 0;

	if (!err || errlen == 0)
		return;
	err[0] = '\0';
	if (doc && doc->text) {
		int r = locate(doc->text, doc->len, path, at_key, &line, &col);
		have = r == 0 || r == MER_ENOTFOUND;
	}
	if (have)
		err_append(err, errlen, &off, "%s:%d:%d: ", label, line, col);
	else
		err_append(err, errlen, &off, "%s: ", label);
	if (path && *path) {
		/* Paths hold member names from untrusted documents: control
		 * characters are escaped so that no name can forge a line. */
		for (const unsigned char *p = (const unsigned char *)path; *p;
		     p++) {
			if (*p < ' ' || *p == 0x7f)
				err_append(err, errlen, &off, "\\x%02x", *p);
			else
				err_append(err, errlen, &off, "%c", *p);
		}
		err_append(err, errlen, &off, ": ");
	}
	err_vappend(err, errlen, &off, fmt, ap);
}

void mer_json_doc_errf(const struct mer_json_doc *doc, const char *path,
		       char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vdoc_err(doc, path, 0, err, errlen, fmt, ap);
	va_end(ap);
}

void mer_json_doc_key_errf(const struct mer_json_doc *doc, const char *path,
			   char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vdoc_err(doc, path, 1, err, errlen, fmt, ap);
	va_end(ap);
}

/* ---- small utilities ------------------------------------------------- */

size_t mer_json_depth(const json_t *v)
{
	size_t max = 0, d;

	if (json_is_object(v)) {
		const char *k;
		json_t *m;
		json_object_foreach((json_t *)v, k, m)
		{
			d = mer_json_depth(m);
			if (d > max)
				max = d;
		}
		return max + 1;
	}
	if (json_is_array(v)) {
		size_t i;
		json_t *m;
		json_array_foreach(v, i, m)
		{
			d = mer_json_depth(m);
			if (d > max)
				max = d;
		}
		return max + 1;
	}
	return 0;
}

char *mer_json_dumps(const json_t *v)
{
	if (!v)
		return NULL;
	return json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
}

const char *mer_json_type_name(const json_t *v)
{
	if (!v)
		return "nothing";
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "a value";
}

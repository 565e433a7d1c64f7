//go:build unix

package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"net/url"
	"slices"
	"strings"
)

// secretForms are the ways a secret could show in text or on the wire: as is,
// URL-encoded for a query and for a path, JSON-escaped, base64 in both alphabets with
// and without padding, and inside Basic credentials for client id, raw or URL-encoded
// as golang.org/x/oauth2 sends them. Forms equal to an earlier one are left out.
func secretForms(id, secret string) []namedSecret {
	b64 := base64.StdEncoding.EncodeToString
	jsonEscaped := func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		_ = enc.Encode(s)
		return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(b.String()), `"`), `"`)
	}
	all := []namedSecret{
		{"raw", secret},
		{"query-escaped", url.QueryEscape(secret)},
		{"path-escaped", url.PathEscape(secret)},
		{"JSON-escaped", jsonEscaped(secret)},
		{"base64", b64([]byte(secret))},
		{"unpadded base64", base64.RawStdEncoding.EncodeToString([]byte(secret))},
		{"base64url", base64.URLEncoding.EncodeToString([]byte(secret))},
		{"unpadded base64url", base64.RawURLEncoding.EncodeToString([]byte(secret))},
		{"Basic credentials", b64([]byte(id + ":" + secret))},
		{"URL-encoded Basic credentials", b64([]byte(url.QueryEscape(id) + ":" + url.QueryEscape(secret)))},
	}
	out := all[:0]
	seen := map[string]bool{}
	for _, f := range all {
		if f.value != "" && !seen[f.value] {
			seen[f.value] = true
			out = append(out, f)
		}
	}
	return out
}

// scanner finds every form (secretForms) of many secrets in text at once. Thousands of
// tokens times ten forms are too many patterns for one bytes.Contains each over logs of
// megabytes, so it hashes the last tailLen bytes of every form (Rabin-Karp, one rolling
// hash for all of them), and only where that hash is one of theirs looks the form up.
type scanner struct {
	secrets []namedSecret
	forms   []scanForm
	tails   map[string][]int32 // last tailLen bytes of a form: indexes into forms
	bloom   []uint64           // bits set by the rolling hash of every tail
	short   []int32            // forms shorter than tailLen, searched one by one
}

// scanForm is one distinct string to look for; owners are the secrets it is a form of
// (indexes into secrets), with the form's name for each.
type scanForm struct {
	value  string
	owners []formOwner
}

type formOwner struct {
	secret int
	form   string
}

const (
	tailLen   = 12
	hashBase  = 1099511628211
	bloomBits = 22
)

func newScanner(secrets []namedSecret) *scanner {
	sc := &scanner{secrets: secrets, tails: map[string][]int32{}, bloom: make([]uint64, 1<<bloomBits/64)}
	byValue := map[string]int32{}
	for i, s := range secrets {
		for _, f := range secretForms(clientID, s.value) {
			if j, ok := byValue[f.value]; ok {
				sc.forms[j].owners = append(sc.forms[j].owners, formOwner{i, f.label})
				continue
			}
			n := len(sc.forms)
			if n > math.MaxInt32 {
				panic("more secret forms than an int32 index holds")
			}
			j := int32(n)
			byValue[f.value] = j
			sc.forms = append(sc.forms, scanForm{value: f.value, owners: []formOwner{{i, f.label}}})
			if len(f.value) < tailLen {
				sc.short = append(sc.short, j)
				continue
			}
			tail := f.value[len(f.value)-tailLen:]
			sc.tails[tail] = append(sc.tails[tail], j)
			sc.setBloom(rollingHash([]byte(tail)))
		}
	}
	return sc
}

func rollingHash(b []byte) uint64 {
	var h uint64
	for _, c := range b {
		h = h*hashBase + uint64(c)
	}
	return h
}

func bloomIndex(h uint64) uint64 { return (h * 0x9E3779B97F4A7C15) >> (64 - bloomBits) }

func (sc *scanner) setBloom(h uint64) {
	i := bloomIndex(h)
	sc.bloom[i/64] |= 1 << (i % 64)
}

func (sc *scanner) inBloom(h uint64) bool {
	i := bloomIndex(h)
	return sc.bloom[i/64]&(1<<(i%64)) != 0
}

// hit is one occurrence of a form: data[start:end] is forms[form].value.
type hit struct {
	start, end int
	form       int32
}

// find returns every occurrence of every form in data, ordered by start.
func (sc *scanner) find(data []byte) []hit {
	var hits []hit
	var pow uint64 = 1
	for range tailLen {
		pow *= hashBase
	}
	var h uint64
	for i, c := range data {
		h = h*hashBase + uint64(c)
		if i >= tailLen {
			h -= uint64(data[i-tailLen]) * pow
		}
		if i+1 < tailLen || !sc.inBloom(h) {
			continue
		}
		end := i + 1
		for _, j := range sc.tails[string(data[end-tailLen:end])] {
			v := sc.forms[j].value
			if start := end - len(v); start >= 0 && string(data[start:end]) == v {
				hits = append(hits, hit{start, end, j})
			}
		}
	}
	for _, j := range sc.short {
		v := []byte(sc.forms[j].value)
		for off := 0; ; {
			k := bytes.Index(data[off:], v)
			if k < 0 {
				break
			}
			hits = append(hits, hit{off + k, off + k + len(v), j})
			off += k + 1
		}
	}
	slices.SortFunc(hits, func(a, b hit) int {
		if a.start != b.start {
			return a.start - b.start
		}
		return b.end - a.end
	})
	return hits
}

// finding is a form of a secret found where it must not be, counted per text.
type finding struct {
	secret, form string
	length       int
	hash         string
	count        int
	firstAt      int
}

// findings are data's hits, less those inside an occurrence of an allowed secret (any
// form of it): a token read's response may hold its own token, and with it the token's
// signature, which the guard also knows as a secret of its own.
func (sc *scanner) findings(data []byte, allowed map[string]bool) []finding {
	hits := sc.find(data)
	var spans [][2]int
	if len(allowed) > 0 {
		for _, h := range hits {
			for _, o := range sc.forms[h.form].owners {
				if allowed[sc.secrets[o.secret].value] {
					spans = append(spans, [2]int{h.start, h.end})
					break
				}
			}
		}
	}
	inAllowed := func(h hit) bool {
		for _, s := range spans {
			if s[0] <= h.start && h.end <= s[1] {
				return true
			}
		}
		return false
	}
	var out []finding
	index := map[[2]string]int{}
	for _, h := range hits {
		if inAllowed(h) {
			continue
		}
		f := sc.forms[h.form]
		o := f.owners[0]
		key := [2]string{sc.secrets[o.secret].label, o.form}
		if i, ok := index[key]; ok {
			out[i].count++
			continue
		}
		index[key] = len(out)
		out = append(out, finding{
			secret: key[0], form: key[1], length: len(f.value), hash: shortHash(f.value), count: 1, firstAt: h.start,
		})
	}
	return out
}

// redact replaces every form of every secret in data, for a dump that is safe to print.
func (sc *scanner) redact(data []byte) []byte {
	var out bytes.Buffer
	pos := 0
	for _, h := range sc.find(data) {
		if h.end <= pos {
			continue
		}
		start := max(h.start, pos)
		out.Write(data[pos:start])
		if start == h.start {
			o := sc.forms[h.form].owners[0]
			out.WriteString("[REDACTED " + sc.secrets[o.secret].label + ", " + o.form + "]")
		}
		pos = h.end
	}
	out.Write(data[pos:])
	return out.Bytes()
}

// formCount is the number of distinct strings the scanner looks for.
func (sc *scanner) formCount() int { return len(sc.forms) }

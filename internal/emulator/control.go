package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// serveControl answers the /_emulator/ endpoints that scripts use to steer a running
// emulator. None of them returns configuration, so none can leak a secret; they are not
// recorded in Requests, which is the tenant's traffic only.
func (e *Emulator) serveControl(w http.ResponseWriter, r *http.Request) {
	name := strings.ToLower(strings.Trim(r.URL.Path[len(controlPrefix):], "/"))
	switch name {
	case "stats":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		writeJSON(w, http.StatusOK, e.Stats())
	case "faults":
		switch r.Method {
		case http.MethodPost:
			e.controlAddFaults(w, r)
		case http.MethodDelete:
			e.ClearFaults()
			writeJSON(w, http.StatusOK, map[string]int{"queued": 0})
		default:
			allowMethod(w, r, http.MethodPost, http.MethodDelete)
		}
	case "expires_in":
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		var req struct {
			ExpiresIn *int `json:"expires_in"`
		}
		if err := decodeStrict(r.Body, &req); err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.ExpiresIn == nil || *req.ExpiresIn < 0 {
			controlError(w, http.StatusBadRequest, `want {"expires_in": seconds}, seconds >= 0 (0 restores the default)`)
			return
		}
		e.SetExpiresIn(*req.ExpiresIn)
		writeJSON(w, http.StatusOK, map[string]int{"expires_in": orDefault(*req.ExpiresIn)})
	case "reset":
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		e.Reset()
		writeJSON(w, http.StatusOK, struct{}{})
	case "client_stats":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		id, ok := queryClientID(w, r)
		if !ok {
			return
		}
		writeJSON(w, http.StatusOK, e.ClientStats(id))
	case "locked":
		if !allowMethod(w, r, http.MethodGet) {
			return
		}
		if id, ok := queryClientID(w, r); ok && e.checkKnown(w, id) {
			writeJSON(w, http.StatusOK, map[string]bool{"locked": e.Locked(id)})
		}
	case "unlock":
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		var req struct {
			ClientID string `json:"client_id"`
		}
		if err := decodeStrict(r.Body, &req); err != nil {
			controlError(w, http.StatusBadRequest, err.Error())
			return
		}
		if req.ClientID == "" {
			controlError(w, http.StatusBadRequest, `want {"client_id": "..."}`)
			return
		}
		if e.checkKnown(w, req.ClientID) {
			e.Unlock(req.ClientID)
			writeJSON(w, http.StatusOK, map[string]bool{"locked": false})
		}
	case "client_secret":
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		e.controlSetClientSecret(w, r)
	case "held_changes":
		switch r.Method {
		case http.MethodGet:
			writeJSON(w, http.StatusOK, map[string]int{"held": e.HeldChanges()})
		case http.MethodDelete:
			writeJSON(w, http.StatusOK, map[string]int{"discarded": e.DiscardHeldChanges()})
		default:
			allowMethod(w, r, http.MethodGet, http.MethodDelete)
		}
	case "token_quirks":
		switch r.Method {
		case http.MethodGet:
			e.controlGetTokenQuirks(w, r)
		case http.MethodPost:
			e.controlSetTokenQuirks(w, r)
		default:
			allowMethod(w, r, http.MethodGet, http.MethodPost)
		}
	case "held_changes/land":
		if !allowMethod(w, r, http.MethodPost) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]int{"landed": e.LandHeldChanges()})
	default:
		controlError(w, http.StatusNotFound, "unknown control endpoint")
	}
}

// controlAddFaults takes a JSON array of faults, or a single fault object for
// convenience in shell scripts, and queues all or none.
func (e *Emulator) controlAddFaults(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes))
	if err != nil {
		controlError(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	var faults []Fault
	if trimmed := bytes.TrimSpace(body); len(trimmed) > 0 && trimmed[0] == '{' {
		var f Fault
		err = decodeStrict(bytes.NewReader(trimmed), &f)
		faults = []Fault{f}
	} else {
		err = decodeStrict(bytes.NewReader(trimmed), &faults)
	}
	if err != nil {
		controlError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(faults) == 0 {
		controlError(w, http.StatusBadRequest, "no faults given")
		return
	}
	for i, f := range faults {
		if err := f.validate(); err != nil {
			controlError(w, http.StatusBadRequest, fmt.Sprintf("fault %d: %v", i, err))
			return
		}
	}
	e.AddFaults(faults...)
	e.mu.Lock()
	queued := len(e.faults)
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]int{"queued": queued})
}

// controlSetClientSecret is SetClientSecret for scripts: an administrator changes the
// service user's password at the tenant. The answer never echoes the secret.
func (e *Emulator) controlSetClientSecret(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AppID    string `json:"app_id"`
		ClientID string `json:"client_id"`
		Secret   string `json:"secret"`
	}
	if err := decodeStrict(r.Body, &req); err != nil {
		controlError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.AppID == "" || req.ClientID == "" || req.Secret == "" {
		controlError(w, http.StatusBadRequest, `want {"app_id": "...", "client_id": "...", "secret": "..."}`)
		return
	}
	if err := e.SetClientSecret(req.AppID, req.ClientID, req.Secret); err != nil {
		// The errors name the app or client, never the secret.
		controlError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, struct{}{})
}

// controlGetTokenQuirks answers an app's token quirks (?app_id=A).
func (e *Emulator) controlGetTokenQuirks(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("app_id")
	if id == "" {
		controlError(w, http.StatusBadRequest, "want ?app_id=...")
		return
	}
	q, err := e.TokenQuirks(id)
	if err != nil {
		controlError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, q)
}

// controlSetTokenQuirks is SetTokenQuirks for scripts: {"app_id":"A","quirks":{...}}
// replaces the app's quirks as a whole ({} restores the defaults) and answers them.
func (e *Emulator) controlSetTokenQuirks(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AppID  string       `json:"app_id"`
		Quirks *TokenQuirks `json:"quirks"`
	}
	if err := decodeStrict(r.Body, &req); err != nil {
		controlError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.AppID == "" || req.Quirks == nil {
		controlError(w, http.StatusBadRequest, `want {"app_id": "...", "quirks": {...}} ({} restores the defaults)`)
		return
	}
	if err := req.Quirks.validate(); err != nil {
		controlError(w, http.StatusBadRequest, "quirks: "+err.Error())
		return
	}
	if err := e.SetTokenQuirks(req.AppID, *req.Quirks); err != nil {
		controlError(w, http.StatusNotFound, err.Error())
		return
	}
	q, _ := e.TokenQuirks(req.AppID)
	writeJSON(w, http.StatusOK, q)
}

// queryClientID reads the client_id query parameter. Client IDs are matched exactly, so
// they travel in the query, which the control path's case folding does not touch.
func queryClientID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.URL.Query().Get("client_id")
	if id == "" {
		controlError(w, http.StatusBadRequest, "want ?client_id=...")
		return "", false
	}
	return id, true
}

// checkKnown answers 404 for a client ID that no app lists, so a misspelt ID in a script
// fails instead of reporting an unlocked user that does not exist.
func (e *Emulator) checkKnown(w http.ResponseWriter, clientID string) bool {
	if !e.knownClient(clientID) {
		controlError(w, http.StatusNotFound, errUnknownClient.Error())
		return false
	}
	return true
}

func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(io.LimitReader(r, maxBodyBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body: want JSON")
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("invalid JSON: trailing data")
	}
	return nil
}

func allowMethod(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	controlError(w, http.StatusMethodNotAllowed, "method not allowed")
	return false
}

func controlError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

package emulator

// heldChange is a ChangeUserPassword the tenant accepted under a Hold fault and has not
// made yet. It keeps the old password as sent, because whether the change can still be
// made depends on the user's password when it lands.
type heldChange struct {
	user        *user
	oldPassword string
	newPassword string
}

// LandHeldChanges makes the held password changes, in the order they arrived, and
// returns how many it made. Each is checked as the tenant would check it now: the old
// password against the user's current one (unless Config.IgnoreOldPassword), then the
// password policy and the history. So a change whose old password an out-of-band change
// (SetClientSecret) or an earlier landing has made stale does not land, while with
// IgnoreOldPassword a late change overwrites whatever password came in between. The
// caller's bearer token was checked when the request came in and is not checked again:
// a token revoked or expired since does not stop the change. A change that fails its
// checks is dropped; the held list is empty afterwards. Landed changes count in
// Stats.PasswordChanges.
func (e *Emulator) LandHeldChanges() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	landed := 0
	for _, c := range e.held {
		if e.makeChange(c) == nil {
			landed++
		}
	}
	e.held = nil
	return landed
}

// DiscardHeldChanges forgets the held changes without making them: the tenant lost
// them. It returns how many it discarded.
func (e *Emulator) DiscardHeldChanges() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := len(e.held)
	e.held = nil
	return n
}

// HeldChanges returns how many accepted password changes are held, not yet made.
func (e *Emulator) HeldChanges() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.held)
}

//! Engine step 2c: clock ticks — inactivity timeouts for channels without an end event,
//! wrap-up capacity release, eviction of closed conversations.

use super::domain::{ConversationState, Visibility};
use super::effect::{Change, TimelineEvent};
use super::{Step, Timer, TimerKind, WrapUpCapacity};

impl Step<'_> {
    pub(super) fn tick(&mut self) {
        while let Some(timer) = self.pop_due_timer() {
            self.fire(timer);
        }
    }

    fn fire(&mut self, timer: Timer) {
        let Some(conversation) = self.conversation(&timer.conversation) else {
            return;
        };
        let id = conversation.id;
        let policy = self.engine.policy(conversation.channel).clone();
        match timer.kind {
            TimerKind::Inactivity => {
                let Some(timeout) = policy.inactivity_timeout else {
                    return;
                };
                if conversation.state == ConversationState::Closed {
                    return;
                }
                let due = conversation.last_activity.plus(timeout);
                if due > self.now {
                    // Activity since the timer was armed: wait for the new deadline.
                    self.arm(due, TimerKind::Inactivity, &id);
                    return;
                }
                // Meta's 24-hour window and SMS silence: the conversation is over.
                let idle_seconds = conversation.last_activity.seconds_until(self.now);
                self.timeline(
                    &id,
                    Visibility::Internal,
                    TimelineEvent::ClosedByInactivity { idle_seconds },
                );
                self.close(&id);
            }
            TimerKind::WrapUpCapacity => {
                let WrapUpCapacity::For(hold) = policy.wrap_up_capacity else {
                    return;
                };
                let due = conversation.wrap_up_at.map(|since| since.plus(hold));
                if conversation.state == ConversationState::WrapUp
                    && conversation.capacity.is_some()
                    && due.is_some_and(|due| due <= self.now)
                {
                    self.release_capacity(&id);
                }
            }
            TimerKind::Evict => {
                let due = conversation
                    .ended_at
                    .map(|ended| ended.plus(self.engine.setup.closed_retention));
                if conversation.state == ConversationState::Closed
                    && due.is_some_and(|due| due <= self.now)
                {
                    self.change(Change::Evicted { id });
                }
            }
        }
    }
}
